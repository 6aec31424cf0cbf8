"""/metrics: what is counted, what cannot be inflated, and that several gunicorn workers add up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from broker import metrics
from broker.sandbox.stack import Sandbox, free_port


def scrape(url: str) -> str:
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the one sample of `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def test_a_granted_exchange_is_counted_with_its_role_provider_and_cloud(sandbox, broker):
    before = scrape(sandbox.broker_url)
    response = sandbox.exchange(sandbox.github_token())
    assert response.status_code == 200, response.text
    after = scrape(sandbox.broker_url)
    labels = dict(outcome="granted", error="", provider="github", cloud="aws", role="deploy-prod")
    assert (
        sample(after, "ci_broker_exchanges_total", **labels)
        == sample(before, "ci_broker_exchanges_total", **labels) + 1
    )
    for name, extra in (
        ("ci_broker_request_duration_seconds_count", {"endpoint": "exchange"}),
        ("ci_broker_upstream_duration_seconds_count", {"cloud": "aws", "result": "ok"}),
    ):
        assert sample(after, name, **extra) == sample(before, name, **extra) + 1


def test_a_refusal_is_counted_with_its_error_code(sandbox, broker):
    before = scrape(sandbox.broker_url)
    assert sandbox.exchange(None).status_code == 401
    after = scrape(sandbox.broker_url)
    labels = dict(outcome="refused", error="invalid_token", role="")
    assert (
        sample(after, "ci_broker_exchanges_total", **labels)
        == sample(before, "ci_broker_exchanges_total", **labels) + 1
    )


def test_role_names_a_caller_invents_never_become_label_values(sandbox, broker):
    invented = [f"made-up-{uuid.uuid4().hex}" for _ in range(20)]
    for name in invented:
        assert sandbox.exchange(sandbox.github_token(), role=name).status_code == 403
    text = scrape(sandbox.broker_url)
    assert not any(name in text for name in invented)
    assert (
        sample(
            text,
            "ci_broker_exchanges_total",
            outcome="refused",
            error="access_denied",
            role=metrics.UNKNOWN_ROLE,
        )
        >= 20
    )


def test_the_role_of_an_unverified_request_is_not_a_label_value(sandbox, broker):
    # A garbage token naming a real role must not show, in /metrics, that the role exists.
    before = scrape(sandbox.broker_url)
    assert sandbox.exchange("garbage", role="deploy-prod").status_code == 401
    assert sandbox.exchange(sandbox.github_token(aud="x"), role="gcp-deploy").status_code == 401
    after = scrape(sandbox.broker_url)
    for role in ("deploy-prod", "gcp-deploy"):
        labels = dict(outcome="refused", error="invalid_token", role=role)
        assert sample(after, "ci_broker_exchanges_total", **labels) == sample(
            before, "ci_broker_exchanges_total", **labels
        )
    labels = dict(outcome="refused", error="invalid_token", role="")
    assert (
        sample(after, "ci_broker_exchanges_total", **labels)
        == sample(before, "ci_broker_exchanges_total", **labels) + 2
    )


def test_a_replayed_token_is_counted_as_a_replay_refusal(sandbox, broker):
    token = sandbox.github_token()
    assert sandbox.exchange(token).status_code == 200
    before = sample(scrape(sandbox.broker_url), "ci_broker_replay_refusals_total")
    assert sandbox.exchange(token).status_code == 401
    assert sample(scrape(sandbox.broker_url), "ci_broker_replay_refusals_total") == before + 1


def test_key_fetches_and_the_key_cache_age_are_exposed(sandbox, broker):
    cache = broker.extensions["broker"].caches["github"]
    cache.refresh()
    text = scrape(sandbox.broker_url)
    assert sample(text, "ci_broker_jwks_fetches_total", issuer=sandbox.github.url, result="ok") >= 1
    age = sample(text, "ci_broker_jwks_cache_age_seconds", issuer=sandbox.github.url)
    assert 0 <= age < 60


def test_a_failed_key_fetch_is_counted_as_an_error(sandbox, broker):
    from werkzeug.wrappers import Response

    cache = broker.extensions["broker"].caches["gitlab"]
    sandbox.gitlab.jwks_hook = lambda request: Response("down", status=503)
    try:
        before = sample(
            scrape(sandbox.broker_url),
            "ci_broker_jwks_fetches_total",
            issuer=sandbox.gitlab.url,
            result="error",
        )
        assert cache.refresh() is False
    finally:
        sandbox.gitlab.jwks_hook = None
    # >=: the broker's background refresher may have failed against the same endpoint meanwhile.
    assert (
        sample(
            scrape(sandbox.broker_url),
            "ci_broker_jwks_fetches_total",
            issuer=sandbox.gitlab.url,
            result="error",
        )
        >= before + 1
    )


def test_rate_limit_hits_are_counted_by_kind_and_unknown_kinds_are_folded(sandbox, broker):
    before = scrape(sandbox.broker_url)
    metrics.rate_limited("per_identity")
    metrics.rate_limited("attacker-chosen")
    after = scrape(sandbox.broker_url)
    for kind in ("per_identity", "other"):
        assert (
            sample(after, "ci_broker_rate_limited_total", kind=kind)
            == sample(before, "ci_broker_rate_limited_total", kind=kind) + 1
        )
    assert "attacker-chosen" not in after


def test_the_signing_key_in_use_is_exposed(sandbox, broker):
    kid = broker.extensions["broker"].config.server.signing_keys[0].kid
    assert sample(scrape(sandbox.broker_url), "ci_broker_signing_key_info", kid=kid, active="true") == 1


# -- under gunicorn, with several workers -----------------------------------------------------------


@pytest.fixture(scope="module")
def two_workers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`ci-broker serve --workers 2` (sqlite replay store), with its temp files in a known place."""
    workdir = tmp_path_factory.mktemp("two-workers")
    tmp = workdir / "tmp"
    tmp.mkdir()
    with Sandbox(workdir) as box:
        config = box.config_dict()
        config["server"]["replay_store"] = f"sqlite:///{workdir / 'replay.db'}"
        path = workdir / "broker.yaml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        log = (workdir / "serve.log").open("wb")
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker",
                "serve",
                "--config",
                str(path),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, "TMPDIR": str(tmp)},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, (workdir / "serve.log").read_text()
                try:
                    if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, "never ready"
                time.sleep(0.1)
            yield url, proc, tmp
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(40)
            log.close()


def worker_pids(master: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return pids


def test_every_worker_counts_into_one_scrape_and_a_dead_workers_counts_survive(two_workers):
    url, proc, _ = two_workers
    labels = dict(outcome="refused", error="invalid_token")
    before = sample(scrape(url), "ci_broker_exchanges_total", **labels)
    for _ in range(30):  # a new connection each, so both workers take some
        requests.post(
            f"{url}/v1/exchange", json={"role": "deploy-prod"}, timeout=10, headers={"Connection": "close"}
        )
    for _ in range(5):  # whichever worker answers the scrape, it reports the whole server
        assert sample(scrape(url), "ci_broker_exchanges_total", **labels) == before + 30

    victim = worker_pids(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while victim in worker_pids(proc.pid) or len(worker_pids(proc.pid)) < 2:
        assert time.monotonic() < deadline, "gunicorn did not replace the worker"
        time.sleep(0.1)
    assert sample(scrape(url), "ci_broker_exchanges_total", **labels) == before + 30


def test_the_metrics_directory_is_private_and_removed_when_the_server_stops(two_workers):
    url, proc, tmp = two_workers
    dirs = [p for p in tmp.iterdir() if p.name.startswith("ci-broker-metrics-")]
    assert len(dirs) == 1 and any(dirs[0].glob("*.db"))
    assert dirs[0].stat().st_mode & 0o077 == 0  # mkdtemp: readable by the broker's user only
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(40) == 0
    assert not dirs[0].exists()


@pytest.mark.process
def test_a_forked_process_writes_its_samples_to_its_own_file(tmp_path):
    # After a fork the child must be told apart from its parent (gunicorn forks every worker from
    # a master that has imported this module), or both would write into one file.
    script = """
import os, sys
from broker import metrics
from prometheus_client import CollectorRegistry, multiprocess
metrics.replay_refused()
child = os.fork()
if child == 0:
    metrics.replay_refused()
    metrics.replay_refused()
    os._exit(0)
os.waitpid(child, 0)
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
total = registry.get_sample_value("ci_broker_replay_refusals_total")
print(os.getpid(), child, total)
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    parent, child, total = out.stdout.split()
    assert float(total) == 3.0
    assert {p.name for p in tmp_path.glob("counter_*.db")} == {f"counter_{parent}.db", f"counter_{child}.db"}


def test_an_app_whose_metrics_are_served_elsewhere_has_no_metrics_route_by_any_spelling(sandbox):
    from broker.app import create_app
    from broker.config import build_config

    config = build_config(sandbox.config_dict(), base_dir=sandbox.workdir)
    app = create_app(config, metrics_route=False)
    try:
        client = app.test_client()
        for path in ("/metrics", "//metrics", "/%6detrics", "/metrics/"):
            for method in ("GET", "OPTIONS", "HEAD"):
                assert client.open(path, method=method).status_code == 404, (method, path)
        assert client.get("/healthz").status_code == 200
    finally:
        app.extensions["broker"].close()
