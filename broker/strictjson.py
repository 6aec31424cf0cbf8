"""JSON parsing that refuses what lenient parsers quietly accept (duplicate keys, NaN, Infinity,
numbers too large for a float), and the compact encoding the broker writes."""

from __future__ import annotations

import json
import math
from typing import Any


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # a repeated key collapsed; name it (the slow path runs only here)
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:50]!r}")
            seen.add(key)
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON text but becomes Infinity in Python, which no JSON encoder can write
    # back (an audit line would carry `Infinity` and stop being JSON).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# Built once: `json.loads` with hooks would build a decoder and its scanner on every call.
# One decoder serves every thread, as json's own default decoder does.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_reject_constant, parse_float=_finite_float
)


def loads(data: bytes | str) -> Any:
    """Parse JSON strictly; raises ValueError (including for bad UTF-8 and deep nesting)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None


# What the broker writes (assertion claims, response bodies): compact, and NaN or Infinity raise
# rather than produce text that is not JSON.
dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
