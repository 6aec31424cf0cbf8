"""Audit events as ArcSight CEF 0 lines (`server.audit.format: cef`), for SIEMs that ingest CEF.

    CEF:0|ci-broker|ci-broker|VERSION|CLASS|NAME|SEVERITY|key=value key=value ...

- Header fields escape `\\` and `|` with a backslash; a control character there (none of ours
  should carry one) becomes a space.
- Extension values escape `\\`, `=` and line breaks (`\\n`, `\\r`); any other control or
  line-separating character (U+0085, U+2028, U+2029) becomes U+FFFD. A line therefore never breaks,
  whatever a CI claim holds. Each value is cut to its key's length in the CEF specification
  (1023 characters for most, 4000 for the `cs` strings) before escaping, so no escape is split.
- Keys are the specification's own (`rt`, `src`, `suser`, `outcome`, `reason`, `cs1`-`cs6` with
  their labels, ...). Fields without a key of their own (`issuer`, `client_request_id`, an alert's
  `details`, and any field added later) go together into `msg` as compact JSON.

The class id is `exchange:granted`, `exchange:refused`, `refresh:...`, or `alert:<kind>`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from broker import __version__

HEADER_PREFIX = f"CEF:0|ci-broker|ci-broker|{__version__}|"
ALERT_SEVERITY = {"low": 3, "medium": 5, "high": 8, "critical": 10}
REFUSAL_SEVERITY = {
    "invalid_token": 4,
    "access_denied": 5,
    "rate_limited": 4,
    "upstream_error": 5,
    "unavailable": 6,
}
REFUSAL_DEFAULT_SEVERITY = 3
INTERNAL_ERROR_SEVERITY = 7
GRANTED_SEVERITY = 2
MSG_LIMIT = 1023

_HEADER_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_VALUE_CONTROL = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
_json = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False).encode


def _millis(value: Any) -> str | None:
    """An RFC 3339 time (as audit events write them) as epoch milliseconds, CEF's time form."""
    if not isinstance(value, str):
        return None
    try:
        return str(int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000))
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return _json(value) if value else None
    return str(value)


def _ip(version: int) -> Callable[[Any], str | None]:
    def pick(value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        is_v6 = ":" in value
        return value if is_v6 == (version == 6) else None

    return pick


# (field, CEF key, label or None, length limit, conversion), in the order written.
FIELDS: tuple[tuple[str, str, str | None, int, Callable[[Any], str | None]], ...] = (
    ("request_id", "externalId", None, 40, _text),
    ("client", "src", None, 15, _ip(4)),
    ("client", "c6a2", "Source IPv6 Address", 45, _ip(6)),
    ("subject", "suser", None, 1023, _text),
    ("outcome", "outcome", None, 63, _text),
    ("reason", "reason", None, 1023, _text),
    ("summary", "reason", None, 1023, _text),
    ("role", "cs1", "role", 4000, _text),
    ("provider", "cs2", "provider", 4000, _text),
    ("cloud", "cs3", "cloud", 4000, _text),
    ("error", "cs4", "error", 4000, _text),
    ("identity", "cs5", "identity", 4000, _text),
    ("claims", "cs6", "claims", 4000, _text),
    ("matched_rule", "cn1", "matched_rule", 20, _text),
    ("token_sha256", "flexString1", "token_sha256", 1023, _text),
    ("jti", "flexString2", "jti", 1023, _text),
    ("expires_at", "deviceCustomDate1", "expires_at", 20, _millis),
)
# Fields the header or `rt`/`cat` already carry.
IN_HEADER = frozenset({"type", "alert", "severity", "time"})
MAPPED = frozenset(f for f, *_ in FIELDS) | IN_HEADER


def escape_header(value: str) -> str:
    return _HEADER_CONTROL.sub(" ", value.replace("\\", "\\\\").replace("|", "\\|"))


def escape_value(value: str) -> str:
    value = value.replace("\\", "\\\\").replace("=", "\\=")
    value = value.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")
    return _VALUE_CONTROL.sub("\ufffd", value)


def severity(event: Mapping[str, Any]) -> int:
    if event.get("type") == "alert":
        return ALERT_SEVERITY.get(str(event.get("severity")), 5)
    if event.get("outcome") == "granted":
        return GRANTED_SEVERITY
    error = event.get("error")
    if error == "internal_error":
        return INTERNAL_ERROR_SEVERITY
    return REFUSAL_SEVERITY.get(str(error), REFUSAL_DEFAULT_SEVERITY)


def header(event: Mapping[str, Any]) -> tuple[str, str]:
    """The event class id and name."""
    kind = str(event.get("type") or "event")
    if kind == "alert":
        alert = str(event.get("alert"))
        return f"alert:{alert}", f"alert {alert}"
    outcome = str(event.get("outcome") or "")
    error = event.get("error")
    return f"{kind}:{outcome}", f"{kind} {outcome}" + (f" ({error})" if error else "")


def line(event: Mapping[str, Any], now: float) -> str:
    """One audit event as one CEF line; `now` (Unix time) becomes `rt`."""
    class_id, name = header(event)
    parts = [f"rt={int(now * 1000)}", f"cat={escape_value(str(event.get('type') or 'event')[:1023])}"]
    written: set[str] = set()
    for field, key, label, limit, convert in FIELDS:
        if key in written:
            continue  # `reason` comes from the event's reason, or an alert's summary
        value = convert(event.get(field))
        if value is None or value == "":
            continue
        written.add(key)
        if label is not None:
            parts.append(f"{key}Label={escape_value(label)}")
        parts.append(f"{key}={escape_value(value[:limit])}")
    rest = {k: v for k, v in event.items() if k not in MAPPED and v is not None and v != {}}
    if rest:
        parts.append(f"msg={escape_value(_json(rest)[:MSG_LIMIT])}")
    head = "|".join(escape_header(text) for text in (class_id, name, str(severity(event))))
    return f"{HEADER_PREFIX}{head}|{' '.join(parts)}"
