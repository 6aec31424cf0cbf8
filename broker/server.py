"""`ci-broker serve`: the Flask app under gunicorn, with limits set explicitly.

gunicorn's own header limits would otherwise answer a long bearer token with its HTML 431 before
our JSON 413 could; so the header field limit sits above the broker's own token cap.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from broker.config import Config
from broker.verify import MAX_TOKEN_CHARS

HEADER_FIELD_LIMIT = MAX_TOKEN_CHARS * 2


class BrokerServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, config: Config, options: dict[str, Any]) -> None:
        self.broker_config = config
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Called in each worker after the fork, so each builds its own JWKS refresher thread,
        # SDK clients and connections (none of those survive a fork).
        from broker.app import create_app
        from broker.audit import configure_stdout_audit

        configure_stdout_audit()
        return create_app(self.broker_config)


def serve(config: Config, bind: str, workers: int, threads: int = 4) -> None:
    options = {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "preload_app": False,
        "graceful_timeout": 30,
        "timeout": 60,
        "keepalive": 5,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": HEADER_FIELD_LIMIT,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "ci-broker",
    }
    BrokerServer(config, options).run()
