"""One JSON audit event per exchange, granted or refused, on its own logger.

Events carry who asked for what and why it was decided, the token's SHA-256 to correlate with the
CI system's logs, and never the token or any credential.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from broker.auditsink import direct_sink

AUDIT_LOGGER = "broker.audit"
_logger = logging.getLogger(AUDIT_LOGGER)
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_clock_text: tuple[int, str] = (0, "")


def _now_text() -> str:
    """The current UTC second in RFC 3339, formatted once per second rather than per event."""
    global _clock_text
    second = int(time.time())
    if _clock_text[0] != second:
        _clock_text = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return _clock_text[1]


def emit(event: dict[str, Any]) -> None:
    if not _logger.isEnabledFor(logging.INFO):
        return
    line = _encode({"event": "exchange", "time": _now_text(), **event})
    sink = direct_sink(_logger)
    if sink is None:
        _logger.handle(_record(line))
        return
    try:
        sink.write_line(line)
    except Exception:  # reported as the handler's emit would report it; the exchange goes on
        sink.handleError(_record(line))


def _record(line: str) -> logging.LogRecord:
    # What Logger.info builds, less its walk up the stack for the caller's file and line: no audit
    # handler prints them, and the walk is a measurable part of an exchange's own CPU time.
    return _logger.makeRecord(AUDIT_LOGGER, logging.INFO, __file__, 0, line, None, None)
