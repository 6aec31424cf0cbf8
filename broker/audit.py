"""One JSON audit event per exchange, granted or refused, on its own logger.

Events carry who asked for what and why it was decided, the token's SHA-256 to correlate with the
CI system's logs, and never the token or any credential.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

AUDIT_LOGGER = "broker.audit"


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def emit(event: dict[str, Any]) -> None:
    event = {"event": "exchange", "time": rfc3339(datetime.now(timezone.utc)), **event}
    logging.getLogger(AUDIT_LOGGER).info(json.dumps(event, separators=(",", ":"), default=str))
