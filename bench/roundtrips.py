"""What the shared store costs an exchange, call by call, in process.

Against a real redis-server (started on loopback, on the other cores) and a sqlite file, from one
thread, in interleaved rounds (so drift in a shared machine's load falls on every row alike):

- the replay record: `RedisReplayStore.first_use` (SET NX EX) and `SqliteReplayStore.first_use`;
- one rate-limit hit: limits' sliding-window counter on redis (one EVALSHA of its script), as
  `broker.ratelimit` uses it, and on memory (per worker, what the sqlite deployment counts with);
- what an exchange sent redis before, in sequence: the replay SET and two rate-limit scripts
  (per client and per identity), three round trips;
- the same three commands pipelined: one round trip;
- the identity limit and the replay record in one script (`RateLimiter.admit_and_spend`), and
  what an exchange sends now: the per-client limit, then that script, two round trips.

Per call it reports wall time (what the request waits) and CPU time (what the worker's core
spends; the rest of the wall time other threads can use), medians over the rounds.

    python -m bench.roundtrips             # 20 rounds of 500 calls per row
    python -m bench.roundtrips --quick     # proves the script works (CI); its figures mean nothing
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import Procs, core_split, load_average, machine, start_redis

RATE = "999999999/minute"  # counted, never refused


def operations(redis_url: str, work: Path) -> dict[str, tuple[int, Callable[[], Any]]]:
    """Each row: (round trips to redis, one call)."""
    from limits import parse
    from limits.storage import MemoryStorage, RedisStorage
    from limits.strategies import SlidingWindowCounterRateLimiter

    from broker.config import RateLimits
    from broker.ratelimit import RateLimiter
    from broker.replay import RedisReplayStore, SqliteReplayStore, redis_options

    item = parse(RATE)
    redis_limits = SlidingWindowCounterRateLimiter(
        RedisStorage(redis_url, wrap_exceptions=True, **redis_options(redis_url))
    )
    memory_limits = SlidingWindowCounterRateLimiter(MemoryStorage())
    redis_store = RedisReplayStore(redis_url)
    sqlite_store = SqliteReplayStore(work / "replay.db")

    limiter = RateLimiter(RateLimits(per_identity=RATE, per_client=RATE), redis_url)

    class Provider:
        def identity(self, claims: Any) -> str:
            return "github:892734123"

    def counted_record() -> None:
        limiter.admit_and_spend(Provider(), {}, redis_store, key(), expiry())  # type: ignore[arg-type]

    def exchange_now() -> None:
        limiter.check_client("127.0.0.1")
        counted_record()

    def key() -> str:
        return uuid.uuid4().hex

    def expiry() -> float:
        return time.time() + 300

    # The pipelined row sends the same commands on one connection in one write: SET NX EX and the
    # limits script twice by its SHA (loaded by the first hit below).
    redis_limits.hit(item, "bench", "client", "127.0.0.1")
    storage = redis_limits.storage
    script = storage.lua_acquire_sliding_window  # type: ignore[attr-defined]
    client = storage.get_connection()  # type: ignore[attr-defined]
    window = [f"LIMITS:bench/pipelined/{scope}/{n}" for scope in ("client", "identity") for n in (0, 1)]

    def pipelined() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.set(f"ci-broker:jti:{key()}", "n", nx=True, ex=300)
        pipe.evalsha(script.sha, 2, window[0], window[1], item.amount, item.get_expiry(), 1)
        pipe.evalsha(script.sha, 2, window[2], window[3], item.amount, item.get_expiry(), 1)
        pipe.execute()

    def in_sequence() -> None:
        redis_limits.hit(item, "bench", "client", "127.0.0.1")
        redis_limits.hit(item, "bench", "identity", "github:892734123")
        redis_store.first_use(key(), expiry())

    return {
        "replay record, redis (SET NX EX)": (1, lambda: redis_store.first_use(key(), expiry())),
        "rate-limit hit, redis (EVALSHA)": (
            1,
            lambda: redis_limits.hit(item, "bench", "client", "127.0.0.1"),
        ),
        "the exchange before: SET + 2 EVALSHA in sequence": (3, in_sequence),
        "the same 3 commands pipelined": (1, pipelined),
        "identity limit + record, one script": (1, counted_record),
        "the exchange now: client EVALSHA + that script": (2, exchange_now),
        "replay record, sqlite": (0, lambda: sqlite_store.first_use(key(), expiry())),
        "rate-limit hit, memory": (0, lambda: memory_limits.hit(item, "bench", "client", "127.0.0.1")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 20 calls")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 20)")
    parser.add_argument("--calls", type=int, help="calls per row per round (default 500)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 20)
    calls = args.calls or (20 if args.quick else 500)
    pin = core_split()
    with tempfile.TemporaryDirectory(prefix="ci-broker-roundtrips-") as tmp:
        work = Path(tmp)
        procs = Procs(work, pin)
        try:
            _, redis_url = start_redis(procs, work)
            if pin:
                os.sched_setaffinity(0, {int(pin["server"])})
            rows = operations(redis_url, work)
            wall: dict[str, list[float]] = {name: [] for name in rows}
            cpu: dict[str, list[float]] = {name: [] for name in rows}
            loads = []
            for round_ in range(-1, rounds):  # round -1 warms up and is not counted
                loads.append(load_average())
                for name, (_, call) in rows.items():
                    started, started_cpu = time.perf_counter(), time.thread_time()
                    for _ in range(calls if round_ >= 0 else 20):
                        call()
                    if round_ >= 0:
                        wall[name].append((time.perf_counter() - started) / calls * 1e6)
                        cpu[name].append((time.thread_time() - started_cpu) / calls * 1e6)
        finally:
            procs.stop_all()
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; pinning {pin or 'none'}")
    print(
        f"{rounds} interleaved rounds of {calls} calls per row, one thread; load average {min(loads):.1f}-{max(loads):.1f}"
    )
    print()
    print(f"{'per call':<48}{'round trips':>12}{'wall us':>10}{'CPU us':>9}")
    for name, (trips, _) in rows.items():
        print(
            f"{name:<48}{trips:>12}{statistics.median(wall[name]):>10.0f}{statistics.median(cpu[name]):>9.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
