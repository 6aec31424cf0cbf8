"""`server.audit`: the audit line format and where lines go, read from the config.

    server:
      audit:
        format: json | cef
        sink: stdout | file:PATH | syslog://HOST:PORT | syslog+tcp://HOST:PORT | syslog:///dev/log
        facility: authpriv

The sinks themselves are `broker.auditsink`; the formats `broker.audit` (JSON) and `broker.cef`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.schema import Section
from broker.syslog import FACILITIES, SyslogAddress, parse_syslog_url

FORMATS = ("json", "cef")


@dataclass(frozen=True)
class AuditSettings:
    """`server.audit`: the line format and where lines go (`sink` as written; `file` resolved)."""

    format: str = "json"
    sink: str = "stdout"
    facility: str = "authpriv"
    file: str | None = None  # sink `file:PATH`, relative paths resolved against the config's directory
    syslog: SyslogAddress | None = None


def read_audit_settings(server: Section, base_dir: Path) -> AuditSettings:
    a = server.section("audit")
    fmt = a.choice("format", FORMATS, "json") or "json"
    sink = a.string("sink", "stdout") or "stdout"
    facility = a.choice("facility", FACILITIES, "authpriv") or "authpriv"
    a.finish()
    file, syslog = None, None
    if sink.startswith("file:"):
        path = sink[len("file:") :]
        if not path:
            a.findings.error(a.at("sink"), "file:PATH needs a path")
        file = str(base_dir / path)
    elif sink.startswith("syslog"):
        try:
            syslog = parse_syslog_url(sink)
        except ValueError as exc:
            a.findings.error(a.at("sink"), str(exc))
    elif sink != "stdout":
        a.findings.error(
            a.at("sink"),
            f"{sink[:80]!r} is not stdout, file:PATH, syslog://HOST:PORT, syslog+tcp://HOST:PORT or syslog:///PATH",
        )
    return AuditSettings(format=fmt, sink=sink, facility=facility, file=file, syslog=syslog)
