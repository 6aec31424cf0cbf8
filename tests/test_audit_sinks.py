"""Audit sinks (`server.audit`): CEF lines a strict parser reads back, and RFC 5424 syslog over UDP,
TCP and a unix socket, received by local receivers. Every event type reaches the sink; no claim
value (a `|`, an `=`, a newline, 10 KB) breaks a line.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import audit, logs
from broker.auditconfig import AuditSettings
from broker.auditsink import AuditSyslog
from broker.cef import line as cef_line
from broker.config import ConfigError, build_config
from broker.sandbox.stack import free_port
from broker.syslog import SyslogAddress
from tests.serving import ServedBroker

HOSTILE = 'a|b\\c=d\ne\rf\r\ng\u2028h\x00i\x85j "k" <l>'


# -- a strict CEF parser --------------------------------------------------------------------------

KEY = re.compile(r"([A-Za-z0-9_]+)=")
EXTENSION_ESCAPES = {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}


def parse_cef(text: str) -> tuple[list[str], dict[str, str]]:
    """(the 7 header fields after `CEF:`, the extension) of one CEF line; fails on anything out of spec."""
    assert "\n" not in text and "\r" not in text, "a CEF event is one line"
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", text), "no control characters"
    assert text.startswith("CEF:0|")
    header: list[str] = []
    field, pos = [], len("CEF:")
    while len(header) < 7:
        c = text[pos]
        if c == "\\":
            assert text[pos + 1] in "|\\", f"bad header escape at {pos}"
            field.append(text[pos + 1])
            pos += 2
        elif c == "|":
            header.append("".join(field))
            field = []
            pos += 1
        else:
            field.append(c)
            pos += 1
    return header, parse_extension(text[pos:])


def parse_extension(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = KEY.match(text, pos)
        assert match, f"expected key= at {text[pos : pos + 40]!r}"
        key, pos = match.group(1), match.end()
        value: list[str] = []
        while pos < len(text):
            c = text[pos]
            if c == "\\":
                assert text[pos + 1] in EXTENSION_ESCAPES, f"bad extension escape {text[pos : pos + 2]!r}"
                value.append(EXTENSION_ESCAPES[text[pos + 1]])
                pos += 2
                continue
            assert c != "=", f"unescaped = in the value of {key}"
            if c == " " and KEY.match(text, pos + 1):
                pos += 1
                break
            value.append(c)
            pos += 1
        assert key not in fields, f"{key} twice"
        fields[key] = "".join(value)
    return fields


def exchange_event(**overrides: Any) -> dict[str, Any]:
    event = audit.AuditEvent("exchange", "0123456789abcdef01234567", "203.0.113.9").fields()
    event.update(
        outcome="refused",
        error="access_denied",
        reason="rule 0: ref: 'x' does not match",
        role="deploy-prod",
        cloud="aws",
        provider="github",
        issuer="https://token.actions.githubusercontent.com",
        subject="repo:octo-org/app:ref:refs/heads/main",
        jti="jti-1",
        token_sha256="ab" * 32,
        claims={"repository": "octo-org/app", "ref": "refs/heads/main"},
        matched_rule=None,
    )
    event.update(overrides)
    return event


# -- CEF ------------------------------------------------------------------------------------------


def test_an_exchange_event_as_cef_reads_back_field_by_field():
    header, ext = parse_cef(cef_line(exchange_event(outcome="granted", error=None, matched_rule=0,
                                                    expires_at="2024-05-01T12:00:00Z"), 1714564800.5))  # fmt: skip
    assert header == [
        "0",
        "ci-broker",
        "ci-broker",
        header[3],
        "exchange:granted",
        "exchange granted",
        "2",
    ]
    assert ext["rt"] == "1714564800500" and ext["cat"] == "exchange"
    assert ext["externalId"] == "0123456789abcdef01234567"
    assert ext["src"] == "203.0.113.9" and ext["suser"] == "repo:octo-org/app:ref:refs/heads/main"
    assert ext["outcome"] == "granted"
    assert (ext["cs1Label"], ext["cs1"]) == ("role", "deploy-prod")
    assert (ext["cs2Label"], ext["cs2"]) == ("provider", "github")
    assert json.loads(ext["cs6"]) == {"repository": "octo-org/app", "ref": "refs/heads/main"}
    assert (ext["cn1Label"], ext["cn1"]) == ("matched_rule", "0")
    assert ext["flexString1"] == "ab" * 32 and ext["flexString2"] == "jti-1"
    assert ext["deviceCustomDate1"] == "1714564800000"
    assert json.loads(ext["msg"]) == {"issuer": "https://token.actions.githubusercontent.com"}
    assert "cs4" not in ext, "absent fields are left out, not written empty"


def test_an_ipv6_client_goes_to_c6a2():
    _, ext = parse_cef(cef_line(exchange_event(client="2001:db8::1"), 0))
    assert "src" not in ext and ext["c6a2"] == "2001:db8::1" and ext["c6a2Label"] == "Source IPv6 Address"


def test_an_alert_as_cef_has_its_kind_and_severity_in_the_header():
    alert = {
        "type": "alert", "alert": "blocked_identity", "severity": "high", "request_id": "r1",
        "client": "203.0.113.9", "provider": "github", "identity": "github:1", "role": "deploy-prod",
        "summary": "github:1 asked for role deploy-prod while blocked (blk-0123456789ab)",
        "details": {"block_id": "blk-0123456789ab"}, "claims": {},
    }  # fmt: skip
    header, ext = parse_cef(cef_line(alert, 0))
    assert header[4:] == ["alert:blocked_identity", "alert blocked_identity", "8"]
    assert ext["reason"] == alert["summary"] and ext["cs5"] == "github:1"
    assert json.loads(ext["msg"]) == {"details": {"block_id": "blk-0123456789ab"}}


@pytest.mark.parametrize("field", ["subject", "reason", "role", "error", "jti"])
def test_hostile_values_are_escaped_and_read_back(field):
    header, ext = parse_cef(cef_line(exchange_event(**{field: HOSTILE}), 0))
    key = {"subject": "suser", "reason": "reason", "role": "cs1", "error": "cs4", "jti": "flexString2"}[field]
    # Line breaks survive as escapes; other control and separator characters become U+FFFD.
    assert ext[key] == 'a|b\\c=d\ne\rf\ng\ufffdh\ufffdi\ufffdj "k" <l>'
    if field == "error":  # the error code is also in the header's name
        assert header[5] == 'exchange refused (a|b\\c=d e f  g h i j "k" <l>)'


def test_hostile_claims_do_not_break_the_line_and_read_back_as_json():
    claims = {"ref": HOSTILE, "environment": "x=y z=w", "workflow_ref": "|||"}
    _, ext = parse_cef(cef_line(exchange_event(claims=claims), 0))
    # JSON escapes the C0 controls itself; U+0085 and U+2028, which it leaves, become U+FFFD.
    expected = {**claims, "ref": HOSTILE.replace("\x85", "\ufffd").replace("\u2028", "\ufffd")}
    assert json.loads(ext["cs6"]) == expected


def test_ten_kilobytes_are_cut_to_the_keys_length_never_into_an_escape():
    big = "=\\" * 5000  # every character needs escaping
    _, ext = parse_cef(cef_line(exchange_event(subject=big, reason=big, claims={"ref": "x" * 10240}), 0))
    assert ext["suser"] == big[:1023] and ext["reason"] == big[:1023]
    assert len(ext["cs6"]) == 4000
    assert len(ext["msg"]) <= 1023


def test_header_escaping():
    header, _ = parse_cef(cef_line({"type": "alert", "alert": "x|y\\z", "severity": "low"}, 0))
    assert header[4] == "alert:x|y\\z"


# -- the format switch and every event type -------------------------------------------------------


@pytest.fixture
def audit_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(audit.AUDIT_LOGGER)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers = []
    yield logger
    for handler in logger.handlers:
        handler.close()
    logger.handlers, logger.level, logger.propagate = saved
    audit.set_format("json")


def test_every_event_type_goes_to_the_sink_in_the_configured_format(audit_logger):
    out = io.StringIO()
    logs.configure_audit(stream=out, settings=AuditSettings(format="cef"))
    audit.emit(exchange_event())
    audit.emit({**exchange_event(), "type": "refresh", "session_id": "s-1"})
    audit.emit({"type": "alert", "alert": "bulk", "severity": "medium", "summary": "many"})
    lines = out.getvalue().splitlines()
    assert [parse_cef(line)[0][4] for line in lines] == ["exchange:refused", "refresh:refused", "alert:bulk"]
    assert json.loads(parse_cef(lines[1])[1]["msg"])["session_id"] == "s-1"
    logs.configure_audit(stream=out, settings=AuditSettings(format="json"))
    audit.emit(exchange_event())
    assert json.loads(out.getvalue().splitlines()[-1])["type"] == "exchange"


# -- syslog ---------------------------------------------------------------------------------------

RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<host>[!-~]{1,255}) "
    r"(?P<app>ci-broker) (?P<pid>\d+) (?P<msgid>audit) - (?P<msg>.*)",
    re.S,
)


def parse_5424(message: bytes) -> dict[str, str]:
    match = RFC5424.fullmatch(message.decode("utf-8"))
    assert match, message[:200]
    return match.groupdict()


class Receiver:
    """A local syslog receiver: UDP, TCP with RFC 6587 octet counting, or a unix datagram socket."""

    def __init__(self, transport: str, tmp_path: Path) -> None:
        self.transport = transport
        self.messages: list[bytes] = []
        self.got = threading.Condition()
        self.port = free_port()
        self.path = str(tmp_path / "log.sock")
        self.sock: socket.socket | None = None

    @property
    def address(self) -> SyslogAddress:
        if self.transport == "unix":
            return SyslogAddress("unix", path=self.path)
        return SyslogAddress(self.transport, host="127.0.0.1", port=self.port)

    def start(self) -> Receiver:
        if self.transport == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(self.path)
        elif self.transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", self.port))
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", self.port))
            self.sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        assert self.sock is not None
        sock = self.sock
        try:
            if self.transport != "tcp":
                while True:
                    self._add(sock.recv(70000))
            while True:
                conn, _ = sock.accept()
                threading.Thread(target=self._read_frames, args=(conn,), daemon=True).start()
        except OSError:
            return

    def _read_frames(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    assert length.isdigit(), buffer[:40]
                    if len(rest) < int(length):
                        break
                    self._add(rest[: int(length)])
                    buffer = rest[int(length) :]

    def _add(self, message: bytes) -> None:
        with self.got:
            self.messages.append(message)
            self.got.notify_all()

    def wait_for(self, n: int, timeout: float = 10) -> list[bytes]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.messages) >= n, timeout), self.messages
            return list(self.messages)

    def stop(self) -> None:
        if self.sock is not None:
            if self.transport == "tcp":
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            self.sock = None


@pytest.fixture
def receivers(tmp_path) -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp", "unix"])
@pytest.mark.parametrize("fmt", ["json", "cef"])
def test_every_event_type_reaches_a_syslog_receiver_as_rfc5424(
    audit_logger, tmp_path, receivers, transport, fmt
):
    receiver = Receiver(transport, tmp_path).start()
    receivers.append(receiver)
    sink = logs.configure_audit(
        settings=AuditSettings(format=fmt, syslog=receiver.address, facility="local3")
    )
    assert isinstance(sink, AuditSyslog)
    events = [
        exchange_event(subject=HOSTILE, claims={"ref": "x" * 10240}),
        {**exchange_event(), "type": "refresh"},
        {"type": "alert", "alert": "new_source", "severity": "low", "summary": "from 203.0.113.0/24"},
    ]
    for event in events:
        audit.emit(event)
    messages = receiver.wait_for(3)
    parsed = [parse_5424(m) for m in messages]
    assert {p["pri"] for p in parsed} == {str(19 * 8 + 6)}, "local3.info"
    assert {p["pid"] for p in parsed} == {str(os.getpid())}
    bodies = [p["msg"] for p in parsed]
    assert all("\n" not in b for b in bodies)
    if fmt == "json":
        assert [json.loads(b)["type"] for b in bodies] == ["exchange", "refresh", "alert"]
        assert json.loads(bodies[0])["subject"] == HOSTILE
    else:
        assert [parse_cef(b)[0][4] for b in bodies] == [
            "exchange:refused",
            "refresh:refused",
            "alert:new_source",
        ]


def test_lines_wait_for_a_tcp_receiver_that_is_away_and_arrive_in_order(audit_logger, tmp_path, receivers):
    receiver = Receiver("tcp", tmp_path)
    receivers.append(receiver)
    logs.configure_audit(settings=AuditSettings(syslog=receiver.address))
    for n in range(5):
        audit.emit({"type": "exchange", "request_id": f"r{n}"})
    time.sleep(0.3)  # the sender is retrying a refused connection meanwhile
    receiver.start()
    messages = receiver.wait_for(5, timeout=20)
    assert [json.loads(parse_5424(m)["msg"])["request_id"] for m in messages] == [f"r{n}" for n in range(5)]


def test_a_full_syslog_queue_drops_new_lines_and_counts_them(tmp_path):
    from prometheus_client import REGISTRY

    def dropped() -> float:
        labels = {"queue": "audit_syslog", "reason": "queue_full"}
        return REGISTRY.get_sample_value("ci_broker_background_dropped_total", labels) or 0.0

    sink = AuditSyslog(SyslogAddress("tcp", host="127.0.0.1", port=free_port()), "authpriv", capacity=2)
    before = dropped()
    for n in range(5):
        sink.write_line(f"line {n}")
    assert dropped() - before >= 2  # the first may already be in the sender's hands
    sink.queue.grace = 0.1
    sink.close()


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        ("stdout", {"file": None, "syslog": None}),
        ("file:audit/events.log", {"file": "audit/events.log"}),
        ("file:/var/log/ci-broker/audit.log", {"file": "/var/log/ci-broker/audit.log"}),
        ("syslog://logs.internal:5514", {"syslog": SyslogAddress("udp", host="logs.internal", port=5514)}),
        ("syslog://logs.internal", {"syslog": SyslogAddress("udp", host="logs.internal", port=514)}),
        ("syslog+tcp://[2001:db8::5]:601", {"syslog": SyslogAddress("tcp", host="2001:db8::5", port=601)}),
        ("syslog:///dev/log", {"syslog": SyslogAddress("unix", path="/dev/log")}),
    ],
)
def test_sinks_the_config_accepts(sandbox, sink, expected):
    config = sandbox.config_dict()
    config["server"]["audit"] = {"sink": sink, "format": "cef"}
    settings = build_config(config, base_dir=sandbox.workdir).server.audit
    assert settings.format == "cef"
    for key, value in expected.items():
        if key == "file" and value is not None:
            value = str(sandbox.workdir / value)  # relative to the config's directory
        assert getattr(settings, key) == value


@pytest.mark.parametrize(
    ("audit_section", "message"),
    [
        ({"sink": "stderr"}, "is not stdout, file:PATH"),
        ({"sink": "file:"}, "needs a path"),
        ({"sink": "syslog+udp://h:514"}, "use syslog://HOST:PORT"),
        ({"sink": "syslog://h:99999"}, "not a valid syslog URL"),
        ({"sink": "syslog://user:pw@h:514"}, "takes no user"),
        ({"sink": "syslog:///"}, "absolute path"),
        ({"format": "leef"}, "'leef' is not one of json, cef"),
        ({"facility": "kernel"}, "is not one of"),
        ({"sink": "stdout", "level": "info"}, "unknown key"),
    ],
)
def test_bad_audit_settings_are_errors_at_their_key(sandbox, audit_section, message):
    config = sandbox.config_dict()
    config["server"]["audit"] = audit_section
    with pytest.raises(ConfigError) as info:
        build_config(config, base_dir=sandbox.workdir)
    errors = [f for f in info.value.findings if f.level == "error"]
    assert len(errors) == 1 and errors[0].path.startswith("server.audit") and message in errors[0].message


# -- under `ci-broker serve` ----------------------------------------------------------------------


@pytest.mark.gunicorn
def test_serve_sends_cef_to_syslog_from_each_worker(tmp_path, receivers):
    from broker.sandbox.stack import Sandbox

    receiver = Receiver("tcp", tmp_path).start()
    receivers.append(receiver)
    with Sandbox(tmp_path / "box") as box:
        config = box.config_dict()
        config["server"]["replay_store"] = f"sqlite:///{tmp_path / 'state.db'}"
        config["server"]["audit"] = {"format": "cef", "sink": f"syslog+tcp://127.0.0.1:{receiver.port}"}
        path = box.write_config(config)
        served = ServedBroker(
            path, f"127.0.0.1:{box.broker_port}", tmp_path / "serve.log", workers=2
        ).wait_ready()
        try:
            token = box.github_token()
            assert box.exchange(token).status_code == 200
            assert box.exchange(token).status_code == 401
            messages = receiver.wait_for(2)
        finally:
            served.stop()
    classes = [parse_cef(parse_5424(m)["msg"])[0][4] for m in messages]
    # Each worker sends from its own background thread: the two may arrive in either order.
    assert sorted(classes) == ["exchange:granted", "exchange:refused"]
    output = served.log.read_text()
    assert token not in output and all(token.encode() not in m for m in messages)
    assert '"type":"exchange"' not in output, "nothing on stdout when the sink is syslog"


def test_audit_log_flag_still_overrides_the_sink(audit_logger, tmp_path):
    # `serve --audit-log FILE` keeps working: lines go to that file, in the configured format.
    syslog = SyslogAddress("udp", host="127.0.0.1", port=free_port())
    logs.configure_audit(str(tmp_path / "a.log"), settings=AuditSettings(format="cef", syslog=syslog))
    audit.emit(exchange_event())
    assert parse_cef((tmp_path / "a.log").read_text().strip())[1]["externalId"] == "0123456789abcdef01234567"


def test_serve_help_still_lists_audit_log():
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--audit-log" in result.stdout
