"""Syslog for the audit sink: RFC 5424 messages over UDP, TCP or a local unix socket.

    <PRI>1 2024-05-01T12:00:00.123Z HOST ci-broker PID audit - LINE

PRI is the configured facility (`authpriv` by default) at severity `info`, from the standard
library's `SysLogHandler` tables. LINE is the audit event, JSON or CEF, always one line.

Framing, by transport:
- UDP (`syslog://HOST:PORT`, RFC 5426): one message per datagram, cut at `MAX_DATAGRAM` bytes.
- TCP (`syslog+tcp://HOST:PORT`, RFC 6587 octet counting): `LEN SP MESSAGE`, which rsyslog and
  syslog-ng both accept and which no byte of a message can break.
- unix (`syslog:///dev/log`): a datagram socket (what journald and rsyslog's imuxsock offer), or a
  stream socket with one message per line if that is all the path accepts.

The standard library's `SysLogHandler` would send over UDP and unix sockets but frames nothing over
TCP and never reconnects it, and it sends on the calling thread; the broker sends from a background
thread (`broker.auditsink.AuditSyslog`) with its own connection handling, below.
"""

from __future__ import annotations

import logging.handlers
import os
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PORT = 514
MAX_DATAGRAM = 65000  # under the IPv4 UDP payload limit (65507); RFC 5426 receivers may cut sooner
CONNECT_TIMEOUT = 5.0
# The facilities an audit stream sensibly goes to (all in the standard library's table).
FACILITIES = ("auth", "authpriv", "daemon", "security", "user", *(f"local{i}" for i in range(8)))
APP_NAME = "ci-broker"
MSGID = "audit"


@dataclass(frozen=True)
class SyslogAddress:
    transport: str  # "udp" | "tcp" | "unix"
    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""

    def describe(self) -> str:
        if self.transport == "unix":
            return f"syslog://{self.path}"
        scheme = "syslog" if self.transport == "udp" else "syslog+tcp"
        return f"{scheme}://{self.host}:{self.port}"


def parse_syslog_url(text: str) -> SyslogAddress:
    """`syslog://HOST[:PORT]` (UDP), `syslog+tcp://HOST[:PORT]`, `syslog:///PATH` (unix socket)."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not a valid syslog URL") from None
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError("a syslog URL takes no user, query or fragment")
    if parts.scheme == "syslog" and not parts.netloc:
        if not parts.path.startswith("/") or parts.path == "/":
            raise ValueError("syslog:///PATH needs the socket's absolute path, e.g. syslog:///dev/log")
        return SyslogAddress("unix", path=parts.path)
    if parts.scheme not in ("syslog", "syslog+tcp") or not parts.hostname:
        raise ValueError("use syslog://HOST:PORT (UDP), syslog+tcp://HOST:PORT or syslog:///dev/log")
    if parts.path not in ("", "/"):
        raise ValueError("a network syslog URL takes no path")
    transport = "udp" if parts.scheme == "syslog" else "tcp"
    return SyslogAddress(transport, host=parts.hostname, port=port or DEFAULT_PORT)


def priority(facility: str, severity: str = "info") -> int:
    """RFC 5424 PRI from the standard library's facility and severity tables."""
    handler = logging.handlers.SysLogHandler
    return (handler.facility_names[facility] << 3) | handler.priority_names[severity]


def _hostname() -> str:
    # RFC 5424 HOSTNAME: printable US-ASCII without spaces, at most 255 characters.
    name = "".join(c for c in socket.gethostname() if "!" <= c <= "~")[:255]
    return name or "-"


class Rfc5424:
    """Builds the messages of one process (hostname and pid are read once, in that process)."""

    def __init__(self, facility: str) -> None:
        self.pri = priority(facility)
        self.hostname = _hostname()
        self.procid = str(os.getpid())

    def message(self, line: str, when: float) -> bytes:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"
        head = f"<{self.pri}>1 {stamp} {self.hostname} {APP_NAME} {self.procid} {MSGID} - "
        return (head + line).encode("utf-8", "surrogatepass")


class SyslogConnection:
    """One socket to the receiver, opened on first use and again after any error."""

    def __init__(self, address: SyslogAddress) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._target: Any = None
        self._stream = False

    def send(self, message: bytes) -> None:
        """Send one message; raises OSError (the socket is then closed, and reopened next time)."""
        try:
            if self._sock is None:
                self._open()
            assert self._sock is not None
            if self.address.transport == "udp":
                self._sock.sendto(message[:MAX_DATAGRAM], self._target)
            elif self.address.transport == "tcp":
                self._sock.sendall(b"%d %s" % (len(message), message))
            elif self._stream:
                self._sock.sendall(message + b"\n")
            else:
                self._sock.send(message[:MAX_DATAGRAM])
        except OSError:
            self.close()
            raise

    def _open(self) -> None:
        a = self.address
        if a.transport == "unix":
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                sock = socket.socket(socket.AF_UNIX, kind)
                try:
                    sock.settimeout(CONNECT_TIMEOUT)
                    sock.connect(a.path)
                except OSError:
                    sock.close()
                    if kind == socket.SOCK_STREAM:
                        raise
                    continue
                self._sock, self._stream = sock, kind == socket.SOCK_STREAM
                return
        kind = socket.SOCK_DGRAM if a.transport == "udp" else socket.SOCK_STREAM
        family, _, _, _, target = socket.getaddrinfo(a.host, a.port, 0, kind)[0]
        sock = socket.socket(family, kind)
        sock.settimeout(CONNECT_TIMEOUT)
        if kind == socket.SOCK_STREAM:
            try:
                sock.connect(target)
            except OSError:
                sock.close()
                raise
        self._sock, self._target = sock, target

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
