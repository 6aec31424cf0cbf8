"""A small typed reader for YAML mappings that records every problem with its key path.

The config loader reads through `Section`s instead of indexing raw dicts, so an unknown key, a
wrong type or a bad URL is reported as one `Finding` naming the exact key path, and loading goes
on to report every other problem in the same pass rather than stopping at the first.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

_MISSING: Any = object()


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    path: str
    message: str

    def render(self, file: str | None = None) -> str:
        where = f"{file}: {self.path}" if file else self.path
        return f"{self.level}: {where}: {self.message}"


@dataclass
class Findings:
    items: list[Finding] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.items.append(Finding("error", path, message))

    def warning(self, path: str, message: str) -> None:
        self.items.append(Finding("warning", path, message))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.items if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.items if f.level == "warning"]


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


class Section:
    """One mapping of the config, read key by key; keys never read are reported as unknown."""

    def __init__(self, data: Any, path: str, findings: Findings) -> None:
        self.path = path
        self.findings = findings
        self.valid = isinstance(data, dict)
        if data is None:
            data = {}
            self.valid = True
        if not isinstance(data, dict):
            findings.error(path or "<top level>", f"must be a mapping, not a {type_name(data)}")
            data = {}
        self._data: dict[Any, Any] = data
        self._read: set[Any] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def keys(self) -> Iterator[Any]:
        return iter(self._data)

    def at(self, key: str) -> str:
        return join(self.path, key)

    def raw(self, key: str, default: Any = _MISSING, *, required: bool = False) -> Any:
        self._read.add(key)
        if key in self._data:
            return self._data[key]
        if required:
            self.findings.error(self.at(key), "is required")
        return None if default is _MISSING else default

    def string(
        self,
        key: str,
        default: str | None = None,
        *,
        required: bool = False,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
    ) -> str | None:
        value = self.raw(key, _MISSING, required=required)
        if value is _MISSING or value is None:
            return default
        if not isinstance(value, str) or not value:
            self.findings.error(self.at(key), f"must be a non-empty string, not a {type_name(value)}")
            return default
        if pattern is not None and not pattern.fullmatch(value):
            self.findings.error(self.at(key), f"{value!r} is not valid{': ' + hint if hint else ''}")
            return default
        return value

    def choice(
        self, key: str, choices: tuple[str, ...], default: str | None = None, *, required: bool = False
    ) -> str | None:
        value = self.string(key, default, required=required)
        if value is not None and value not in choices:
            self.findings.error(self.at(key), f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def integer(
        self,
        key: str,
        default: int | None = None,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        required: bool = False,
    ) -> int | None:
        value = self.raw(key, _MISSING, required=required)
        if value is _MISSING or value is None:
            return default
        # bool is an int in Python; `duration: yes` must not become 1 second.
        if isinstance(value, bool) or not isinstance(value, int):
            self.findings.error(self.at(key), f"must be an integer (seconds), not a {type_name(value)}")
            return default
        if minimum is not None and value < minimum:
            self.findings.error(self.at(key), f"must be at least {minimum}, not {value}")
            return default
        if maximum is not None and value > maximum:
            self.findings.error(self.at(key), f"must be at most {maximum}, not {value}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, _MISSING)
        if value is _MISSING or value is None:
            return default
        if not isinstance(value, bool):
            self.findings.error(self.at(key), f"must be true or false, not a {type_name(value)}")
            return default
        return value

    def string_list(
        self, key: str, default: tuple[str, ...] = (), *, required: bool = False
    ) -> tuple[str, ...]:
        value = self.raw(key, _MISSING, required=required)
        if value is _MISSING or value is None:
            return default
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.findings.error(self.at(key), "must be a non-empty list of strings")
            return default
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.findings.error(
                    join(self.at(key), i), f"must be a non-empty string, not a {type_name(item)}"
                )
            else:
                out.append(item)
        return tuple(out)

    def url(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.string(key, None, required=required)
        if value is None:
            return default
        problem = url_problem(value)
        if problem:
            self.findings.error(self.at(key), problem)
            return default
        return value

    def section(self, key: str, *, required: bool = False) -> Section:
        return Section(self.raw(key, None, required=required), self.at(key), self.findings)

    def finish(self) -> None:
        """Report every key of this mapping that no reader asked for."""
        for key in self._data:
            if key not in self._read:
                self.findings.error(self.at(str(key)), "unknown key")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(value: str) -> str | None:
    """Why `value` is not an acceptable URL, or None.

    https everywhere; http only for loopback hosts, so local tests and demos work and no
    production endpoint can be downgraded to cleartext.
    """
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port  # raises on a non-numeric port
    except ValueError:
        return f"{value!r} is not a valid URL"
    if parts.scheme not in ("https", "http") or not host:
        return f"{value!r} must be an absolute https:// URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.fragment or parts.query:
        return f"{value!r} must not have a query or fragment"
    if parts.scheme == "http" and not is_loopback_host(host):
        return f"{value!r} must use https:// (http:// is allowed only for loopback hosts)"
    return None
