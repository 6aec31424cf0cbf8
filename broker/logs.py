"""Logs as JSON lines: operational records on stderr, audit events on their own logger.

Every operational line carries `request_id` (null outside a request) so one exchange can be
followed across the broker's lines, its audit event and the caller's `X-Request-Id` header. The
audit logger (`broker.audit`) does not propagate: its lines are already JSON events and go to
stdout or to a file the operator names, so they can be routed and retained apart from the rest.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from broker import audit, requestid
from broker.audit import AUDIT_LOGGER
from broker.auditconfig import AuditSettings
from broker.auditsink import AuditFile, AuditStream, AuditSyslog, LineHandler

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class RequestIdFilter(logging.Filter):
    """Adds the current request's id (or None) to every record a handler formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = requestid.current()
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{levelname}{name}{message}{request_id}{process}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        timestamp="time",
    )


def gunicorn_logconfig(level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for gunicorn's master and workers: every line JSON on stderr.

    gunicorn applies it after its own set-up, so its error log loses its plain-text handler and
    propagates to the root's JSON one; its access log stays off (the audit log covers exchanges).
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"json": {"()": json_formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "json",
                "filters": ["request_id"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }


def configure(level: str = "INFO", stream: IO[str] | None = None) -> None:
    """JSON lines for the root logger outside gunicorn (tests, `python -m broker`, tools)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_ci_broker", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestIdFilter())
    handler._ci_broker = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def configure_audit(
    path: str | None = None, stream: IO[str] | None = None, settings: AuditSettings | None = None
) -> LineHandler:
    """Route audit events as `settings` (`server.audit`) say: JSON or CEF lines, to stdout, a file
    (appended; reopened if logrotate moves it) or syslog. `path` (`serve --audit-log`) overrides
    the sink with that file; `stream` (tests) with that stream.

    Replaces a handler this function installed before, leaves any other (an operator's or a
    test's) alone. Call it in the process that writes (each worker, after the fork): a syslog
    sink sends from a thread of that process.
    """
    settings = settings or AuditSettings()
    logger = logging.getLogger(AUDIT_LOGGER)
    for old in list(logger.handlers):
        if getattr(old, "_ci_broker", False):
            logger.removeHandler(old)
            old.close()
    audit.set_format(settings.format)
    handler = audit_handler(path, stream, settings)
    handler._ci_broker = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def audit_handler(path: str | None, stream: IO[str] | None, settings: AuditSettings) -> LineHandler:
    """The sink `settings` name (`path` or `stream` instead, if given), not attached to a logger."""
    if path or (stream is None and settings.file):
        return AuditFile(path or settings.file or "")
    if stream is None and settings.syslog is not None:
        return AuditSyslog(settings.syslog, settings.facility)
    return AuditStream(stream or sys.stdout)
