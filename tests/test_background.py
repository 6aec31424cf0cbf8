"""The bounded background queue behind the webhook, the alert counters and the syslog sink."""

from __future__ import annotations

import multiprocessing
import threading

from broker.background import BackgroundQueue


def dropped(queue: str, reason: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"queue": queue, "reason": reason}
    return REGISTRY.get_sample_value("ci_broker_background_dropped_total", labels) or 0.0


def test_items_are_handled_in_order_in_batches_that_gather_while_the_thread_lingers():
    batches: list[list[int]] = []
    queue: BackgroundQueue[int] = BackgroundQueue("test", batches.append, capacity=100, batch=10, linger=5.0)
    for n in range(25):
        assert queue.offer(n)
    assert queue.flush(10)
    assert [n for batch in batches for n in batch] == list(range(25))
    assert all(len(batch) <= 10 for batch in batches) and len(batches) >= 3
    queue.close()


def test_flush_does_not_wait_out_the_linger():
    handled = threading.Event()
    queue: BackgroundQueue[int] = BackgroundQueue(
        "test", lambda items: handled.set(), capacity=10, batch=100, linger=60.0
    )
    queue.offer(1)
    assert queue.flush(10), "a batch that will never fill is handled once someone waits for it"
    assert handled.is_set()
    queue.close()


def test_a_full_queue_drops_the_newest_and_counts_them():
    busy, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def slow(items: list[int]) -> None:
        busy.set()
        release.wait(10)
        seen.extend(items)

    queue: BackgroundQueue[int] = BackgroundQueue("test_full", slow, capacity=3)
    before = dropped("test_full", "queue_full")
    queue.offer(0)
    assert busy.wait(10)  # the thread holds item 0; the queue itself is empty
    assert [queue.offer(n) for n in range(1, 10)] == [True] * 3 + [False] * 6
    assert dropped("test_full", "queue_full") == before + 6
    release.set()
    assert queue.flush(10)
    assert seen == [0, 1, 2, 3]
    queue.close()


def test_a_failing_handler_does_not_stop_the_thread():
    seen: list[int] = []

    def handle(items: list[int]) -> None:
        if items == [1]:
            raise RuntimeError("boom")
        seen.extend(items)

    queue: BackgroundQueue[int] = BackgroundQueue("test", handle, capacity=10)
    for n in range(3):
        queue.offer(n)
    assert queue.flush(10)
    assert seen == [0, 2]
    queue.close()


def test_close_counts_what_is_left_and_refuses_more():
    release = threading.Event()
    queue: BackgroundQueue[int] = BackgroundQueue(
        "test_close", lambda items: release.wait(10), capacity=10, grace=0.2
    )
    before = dropped("test_close", "shutdown")
    for n in range(4):
        queue.offer(n)
    release_later = threading.Timer(0.5, release.set)
    release_later.start()
    queue.close()
    assert dropped("test_close", "shutdown") >= before + 3
    assert not queue.offer(9)
    release_later.join()


def _child(queue: BackgroundQueue[int], seen: list[int], out: multiprocessing.connection.Connection) -> None:
    queue.offer(7)
    out.send((queue.flush(10), list(seen)))


def test_a_forked_child_gets_a_queue_and_a_thread_of_its_own():
    seen: list[int] = []
    queue: BackgroundQueue[int] = BackgroundQueue("test", seen.extend, capacity=10)
    queue.offer(1)
    assert queue.flush(10) and seen == [1]
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=_child, args=(queue, seen, child))
    process.start()
    flushed, child_seen = parent.recv()
    process.join(10)
    assert flushed and child_seen == [1, 7], "the child's own thread handled the child's item"
    assert seen == [1], "nothing crossed back to the parent"
    queue.close()
