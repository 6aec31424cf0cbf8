"""`ci-broker serve`: the Flask app under gunicorn, with limits set explicitly.

Slow clients: the worker (`broker.worker`, gthread underneath) reads each request whole, with
deadlines, before a thread sees it, so stalled or trickling connections cost a socket each and
never a thread; `worker_connections` bounds them per worker (docs/operations.md, "Slow clients").

Header limits: gunicorn's own would otherwise answer a long bearer token with its HTML 431 before
our JSON 413 could (and gunicorn 27 reads a limit of 0 as 8190 bytes, not unlimited). The worker
refuses a header block over `broker.framing.HEAD_LIMIT` (32 KiB) with a JSON 413 before gunicorn
parses it, and gunicorn's field limit is set to that same size, so a long token meets a JSON 413
(the app's up to 32 KiB, the worker's beyond) and never gunicorn's 431.

Tuning: an exchange is CPU work around one network round trip to the cloud. Python runs one
thread at a time per process, so throughput scales with processes (one per core) and threads only
overlap the cloud's round trip; `DEFAULT_THREADS` is chosen to overlap a slow cloud's round trip
(the measurements are in bench/RESULTS.md).

Metrics: each worker writes its samples to files in a private directory (prometheus_client's
multiprocess mode) that `/metrics` adds up; the directory is made before any worker starts,
dead workers' live gauges are dropped by the `child_exit` hook, and the directory is removed
when the server exits. With `--metrics-bind`, the master serves `/metrics` on that address
(`broker.metricslistener`) and the main port answers 404 there.
"""

from __future__ import annotations

import gc
import importlib
import os
import shutil
import sys
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from broker import logs
from broker.config import Config
from broker.framing import HEAD_LIMIT
from broker.metrics import MULTIPROC_ENV
from broker.metricslistener import MetricsListener
from broker.replay import is_redis_url
from broker.worker import BufferingThreadWorker

DEFAULT_THREADS = 16  # `serve --threads` default; see the module docstring and bench/RESULTS.md
# Connections per worker, most of them slow or idle: each costs a socket and a request buffer of
# at most HEAD_LIMIT + BODY_LIMIT (48 KiB), never a thread. With the cloud SDKs' pools and log
# files, 512 stays inside the common soft limit of 1024 open files per process.
WORKER_CONNECTIONS = 512
GRACEFUL_TIMEOUT = 30  # in-flight exchanges finish after SIGTERM; the cloud calls time out in 10 s
# What each cloud's back end imports when a worker builds it (broker/clouds/); imported in the
# master instead, once, when a role uses that cloud.
CLOUD_SDKS = {
    "aws": ("boto3", "botocore.session", "botocore.client"),
    "gcp": ("google.auth.identity_pool", "google.auth.exceptions", "requests"),
    "azure": ("azure.identity", "azure.core.pipeline.transport"),
}


class BrokerServer(BaseApplication):
    def __init__(
        self,
        config: Config,
        options: dict[str, Any],
        audit_log: str | None = None,
        *,
        metrics_elsewhere: bool = False,
    ) -> None:
        self.broker_config = config
        self.options = options
        self.audit_log = audit_log
        self.metrics_elsewhere = metrics_elsewhere
        super().__init__()

    def load_config(self) -> None:
        apply_options(self.cfg, self.options)

    def load(self) -> Any:
        # Called in each worker after the fork, so each builds its own JWKS refresher thread,
        # SDK clients and connections (none of those survive a fork).
        from broker.app import create_app

        logs.configure_audit(self.audit_log, settings=self.broker_config.server.audit)
        return create_app(self.broker_config, metrics_route=not self.metrics_elsewhere)


def gunicorn_options(
    bind: str, workers: int, threads: int = DEFAULT_THREADS, log_level: str = "INFO"
) -> dict[str, Any]:
    """The gunicorn settings `serve` uses (the benchmark runs its reference apps with these too)."""
    return {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": BufferingThreadWorker,
        "worker_connections": WORKER_CONNECTIONS,
        "preload_app": False,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "timeout": 60,
        "keepalive": 5,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": HEAD_LIMIT,
        # What the worker reads itself must be what gunicorn then parses: HTTP/1.1, no TLS,
        # no PROXY protocol header (BufferingThreadWorker.check_config refuses anything else).
        "http_protocols": "h1",
        "proxy_protocol": "off",
        # The heartbeat file is touched every second; on tmpfs that never waits on a disk.
        "worker_tmp_dir": "/dev/shm" if os.access("/dev/shm", os.W_OK) else None,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": log_level.lower(),
        "logconfig_dict": logs.gunicorn_logconfig(log_level.upper()),
        "proc_name": "ci-broker",
        # gunicorn's control socket (in $HOME, shared by every instance of the user) would let any
        # local process of that user resize or reload the broker; it has no use here.
        "control_socket_disable": True,
        "child_exit": _child_exit,
    }


def import_before_fork(config: Config) -> None:
    """Import in the master what every worker would import after the fork (Flask, the request
    path, the SDK of each cloud the roles use, redis for a redis store), then move everything the
    master holds, the loaded config included, out of the cycle collector's reach (`gc.freeze`,
    Python's advice for pre-fork servers): the workers share those pages instead of each copying
    them as its collector walks them.

    Imports only: no client, thread, connection or key is made here, since none of those survive
    a fork; each worker builds its own in `BrokerServer.load`.
    """
    import broker.app  # noqa: F401  (after prepare_metrics_dir: prometheus_client reads it at import)

    modules = [
        sdk for cloud in sorted({r.cloud for r in config.roles.values()}) for sdk in CLOUD_SDKS.get(cloud, ())
    ]
    if is_redis_url(config.server.replay_store):
        modules.append("redis")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # the worker that needs it reports the missing extra, as without this step
    gc.freeze()


def apply_options(cfg: Any, options: dict[str, Any]) -> None:
    for key, value in options.items():
        cfg.set(key, value)


def _child_exit(server: Any, worker: Any) -> None:
    # Runs in the master: the dead worker's live gauges (key-cache timestamps) stop counting.
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def prepare_metrics_dir() -> tuple[str, bool]:
    """Point prometheus_client at a fresh directory; returns it and whether we made it.

    An operator's own PROMETHEUS_MULTIPROC_DIR (a tmpfs under a read-only root, say) is used as
    given, emptied of a previous run's files; otherwise a private directory is made.
    """
    if "prometheus_client" in sys.modules and not os.environ.get(MULTIPROC_ENV):
        # Its value class is chosen at import: imported earlier, it would count per process.
        raise RuntimeError("prometheus_client was imported before the metrics directory was set")
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        os.makedirs(existing, exist_ok=True)
        for name in os.listdir(existing):
            if name.endswith(".db"):
                os.unlink(os.path.join(existing, name))
        return existing, False
    path = tempfile.mkdtemp(prefix="ci-broker-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path, True


def serve(
    config: Config,
    bind: str,
    workers: int,
    threads: int | None = None,
    *,
    audit_log: str | None = None,
    log_level: str = "INFO",
    metrics_listener: MetricsListener | None = None,
) -> None:
    threads = DEFAULT_THREADS if threads is None else threads
    metrics_dir, made = prepare_metrics_dir()
    master = os.getpid()
    options = gunicorn_options(bind, workers, threads, log_level)
    if metrics_listener is not None:
        # gunicorn calls when_ready in the master once it listens, before the first fork.
        options["when_ready"] = lambda arbiter: metrics_listener.start()
        options["post_fork"] = lambda arbiter, worker: metrics_listener.close_inherited()
    server = BrokerServer(config, options, audit_log, metrics_elsewhere=metrics_listener is not None)
    import_before_fork(config)
    try:
        server.run()
    finally:
        # gunicorn exits through SystemExit on SIGTERM/SIGINT, so this runs on a graceful stop.
        # Its workers are forks that leave through this same frame: only the master cleans up.
        if made and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)
