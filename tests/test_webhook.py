"""The alert webhook: off the request path, bounded, retried, and never a token.

A local HTTP receiver plays the webhook; it can answer any status, hang, or be absent. What the
queue promises (`broker.webhook`, `broker.background`): an alert accepted into the queue is
delivered once the receiver answers 2xx within the retries; one that finds the queue full is
dropped and counted; a 4xx other than 408/429 is final. The exchange's own latency with a slow or
absent webhook is measured by bench/incident.py, not asserted here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from broker.sandbox.stack import free_port
from broker.webhook import WebhookSender, payload


class Receiver:
    """A webhook endpoint: records each POST body; answers `statuses` in turn (then 200)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/T000/B000/secret-part"
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.arrived.set()
                receiver.hold.wait(30)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        # shutdown() waits out one poll: the default half second, in every test's teardown.
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.hold.set()
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def alert(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": "alert",
        "alert": "denied_burst",
        "severity": "medium",
        "request_id": f"r{n}",
        "summary": f"alert number {n}",
        **fields,
    }


def sender(url: str, **kwargs: Any) -> WebhookSender:
    options = {"first_backoff": 0.02, "grace": 0.5, **kwargs}
    s = WebhookSender(url, timeout=2, **options)
    s.start()
    return s


def dropped(reason: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "ci_broker_background_dropped_total", {"queue": "webhook", "reason": reason}
    )
    return value or 0.0


def test_an_alert_is_posted_with_a_slack_text_and_the_alert_fields(receiver):
    receiver.start()
    s = sender(receiver.url)
    assert s.send(alert(1, claims={"ref": "refs/heads/<!channel>"}))
    assert s.queue.flush(10)
    (body,) = receiver.bodies
    assert body["text"] == "ci-broker medium alert denied_burst: alert number 1"
    assert body["alert"]["request_id"] == "r1"
    assert body["alert"]["claims"]["ref"] == "refs/heads/<!channel>"  # data, not Slack markup
    s.close()


def test_slack_markup_in_the_text_is_escaped():
    text = payload(alert(1, summary="repo <!channel> & <https://evil|click>"))["text"]
    assert "<" not in text and ">" not in text
    assert "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;" in text


def test_an_absent_webhook_loses_nothing_the_queue_accepted(receiver):
    s = sender(receiver.url, max_attempts=50)
    for n in range(5):
        assert s.send(alert(n))
    assert not s.queue.flush(0.3), "nobody is listening yet: the alerts wait"
    receiver.start()
    assert s.queue.flush(20)
    assert [b["alert"]["request_id"] for b in receiver.bodies] == [f"r{n}" for n in range(5)], "all, in order"
    s.close()


def test_a_full_queue_drops_new_alerts_and_counts_them(receiver):
    receiver.hold.clear()
    receiver.start()
    s = sender(receiver.url, capacity=3)
    before = dropped("queue_full")
    assert s.send(alert(0))
    assert receiver.arrived.wait(10)  # the sender holds alert 0 in a POST that hangs
    assert [s.send(alert(n)) for n in range(1, 6)] == [True, True, True, False, False]
    assert dropped("queue_full") == before + 2
    receiver.hold.set()
    assert s.queue.flush(20)
    assert [b["alert"]["request_id"] for b in receiver.bodies] == ["r0", "r1", "r2", "r3"]
    s.close()


def test_server_errors_and_429_are_retried(receiver):
    receiver.statuses = [500, 503, 429, 408]
    receiver.start()
    s = sender(receiver.url)
    s.send(alert(1))
    assert s.queue.flush(10)
    assert len(receiver.bodies) == 1 and receiver.statuses == []
    s.close()


def test_a_4xx_is_final_and_counted_as_rejected(receiver):
    receiver.statuses = [404, 200]
    receiver.start()
    s = sender(receiver.url)
    before = dropped("rejected")
    s.send(alert(1))
    assert s.queue.flush(10)
    assert receiver.bodies == [] and receiver.statuses == [200], "tried once, not retried"
    assert dropped("rejected") == before + 1
    s.close()


def test_retries_end_and_the_alert_is_counted_as_given_up(receiver, caplog):
    s = sender(receiver.url, max_attempts=3)
    before = dropped("gave_up")
    s.send(alert(1))
    assert s.queue.flush(10)
    assert dropped("gave_up") == before + 1
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "failed 3 times" in logged
    assert "secret-part" not in logged and "/hooks/" not in logged, (
        "the URL is a secret: only its host is logged"
    )
    s.close()


def test_a_hanging_webhook_never_holds_up_the_caller(receiver):
    # The receiver holds every request until the test lets go; `send` must return all the same
    # (if it waited for the POST, this test would hang until its timeout).
    receiver.hold.clear()
    receiver.start()
    s = sender(receiver.url)
    assert s.send(alert(1))
    assert receiver.arrived.wait(10)
    assert all(s.send(alert(n)) for n in range(2, 6)), "queued while the first POST hangs"
    receiver.hold.set()
    assert s.queue.flush(20)
    assert len(receiver.bodies) == 5
    s.close()


def test_closing_counts_what_is_left_as_dropped(receiver):
    s = sender(receiver.url, max_attempts=50, grace=0.2)
    before = dropped("shutdown")
    for n in range(3):
        s.send(alert(n))
    s.close()
    assert dropped("shutdown") == before + 3
    assert not s.send(alert(9)), "a closed sender takes nothing"


def test_an_exchange_never_waits_for_the_webhook(sandbox, serve_config, tmp_path, receiver, audit_events):
    # The whole broker: its webhook hangs, its exchanges still complete and their alerts queue.
    receiver.hold.clear()
    receiver.start()
    config = sandbox.config_dict()
    config["server"]["alerts"] = {
        "webhook": {"url": receiver.url},
        "denied_burst": {"count": 2, "window": 60},
        "bulk": "off",
        "new_source": "off",
    }
    app = serve_config(config)
    tokens = [sandbox.github_token(repository_id="666") for _ in range(4)]
    for token in tokens:
        assert sandbox.exchange(token).status_code == 403
    assert receiver.arrived.wait(10), "the first alert's POST is in flight, and held"
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    receiver.hold.set()
    webhook = app.extensions["broker"].alerts.webhook
    assert app.extensions["broker"].alerts.queue.flush(10) and webhook.queue.flush(20)
    assert {b["alert"]["alert"] for b in receiver.bodies} == {"denied_burst"}
    sent = json.dumps(receiver.bodies)
    for token in tokens:
        assert token.split(".")[2] not in sent and token not in sent
