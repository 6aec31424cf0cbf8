"""The audit sink: whole lines, rotation without a signal, and the same events however they route."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import audit, logs
from broker.auditsink import FILE_MODE, AuditFile, direct_sink


@pytest.fixture
def audit_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(audit.AUDIT_LOGGER)
    saved = (list(logger.handlers), list(logger.filters), logger.level, logger.propagate, logger.disabled)
    logger.handlers, logger.filters = [], []
    yield logger
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers, logger.filters, logger.level, logger.propagate, logger.disabled = saved


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_events_reach_the_file_alike_whether_written_directly_or_through_logging(tmp_path, audit_logger):
    path = tmp_path / "audit.log"
    sink = logs.configure_audit(str(path))
    assert direct_sink(audit_logger) is sink
    audit.emit({"request_id": "direct", "outcome": "granted"})
    theirs = Capture()
    audit_logger.addHandler(theirs)  # an operator's extra route: now logging must dispatch
    assert direct_sink(audit_logger) is None
    audit.emit({"request_id": "routed", "outcome": "refused"})
    first, second = lines(path)
    assert first.keys() == second.keys() and {first["request_id"], second["request_id"]} == {
        "direct",
        "routed",
    }
    assert [json.loads(m)["request_id"] for m in theirs.messages] == ["routed"]


def test_a_filter_or_a_raised_level_is_obeyed_as_logging_would(tmp_path, audit_logger):
    path = tmp_path / "audit.log"
    sink = logs.configure_audit(str(path))
    audit_logger.addFilter(lambda record: False)
    audit.emit({"request_id": "filtered"})
    audit_logger.filters.clear()
    sink.addFilter(lambda record: False)
    audit.emit({"request_id": "filtered by the handler"})
    sink.filters.clear()
    sink.setLevel(logging.WARNING)
    audit.emit({"request_id": "below the handler's level"})
    sink.setLevel(logging.INFO)
    audit_logger.setLevel(logging.WARNING)
    audit.emit({"request_id": "below the logger's level"})
    audit_logger.setLevel(logging.INFO)
    audit_logger.disabled = True  # what logging.config does to loggers it was not told about
    audit.emit({"request_id": "from a disabled logger"})
    audit_logger.disabled = False
    audit.emit({"request_id": "kept"})
    assert [e["request_id"] for e in lines(path)] == ["kept"]


def test_a_file_moved_or_deleted_by_logrotate_is_replaced_at_the_same_path(tmp_path, audit_logger):
    path = tmp_path / "audit.log"
    logs.configure_audit(str(path))
    audit.emit({"request_id": "one"})
    path.rename(tmp_path / "audit.log.1")
    audit.emit({"request_id": "two"})
    path.unlink()
    audit.emit({"request_id": "three"})
    assert [e["request_id"] for e in lines(tmp_path / "audit.log.1")] == ["one"]
    assert [e["request_id"] for e in lines(path)] == ["three"]


def test_the_file_is_appended_to_and_not_readable_by_others(tmp_path, audit_logger):
    path = tmp_path / "audit.log"
    logs.configure_audit(str(path))
    audit.emit({"request_id": "new"})
    assert stat.S_IMODE(path.stat().st_mode) & ~FILE_MODE == 0
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0
    path.write_text(path.read_text())  # same inode, so the sink keeps its descriptor
    audit.emit({"request_id": "after"})
    assert [e["request_id"] for e in lines(path)] == ["new", "after"]


def test_lines_from_many_threads_stay_whole(tmp_path, audit_logger):
    path = tmp_path / "audit.log"
    logs.configure_audit(str(path))
    padding = "x" * 3000  # longer than a pipe's atomic write, as an event with many claims is

    def write(thread: int) -> None:
        for i in range(200):
            audit.emit({"request_id": f"{thread}-{i}", "claims": {"padding": padding}})

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [e["request_id"] for e in lines(path)]
    assert sorted(ids) == sorted(f"{t}-{i}" for t in range(8) for i in range(200))


def test_a_stream_sink_writes_each_event_as_one_flushed_line(audit_logger):
    stream = io.StringIO()
    logs.configure_audit(stream=stream)
    audit.emit({"request_id": "streamed"})
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["streamed"]


def test_a_failed_write_is_reported_as_logging_reports_it_and_the_caller_goes_on(audit_logger, capsys):
    stream = io.StringIO()
    logs.configure_audit(stream=stream)
    stream.close()
    audit.emit({"request_id": "lost"})  # no exception reaches the exchange
    assert "Logging error" in capsys.readouterr().err


def test_an_event_propagated_to_the_root_logger_reaches_its_handlers_too(tmp_path, audit_logger):
    path = tmp_path / "audit.log"
    logs.configure_audit(str(path))
    root_capture = Capture()
    root = logging.getLogger()
    root.addHandler(root_capture)
    try:
        audit_logger.propagate = True  # an operator who wants audit events in the main log too
        audit.emit({"request_id": "both"})
    finally:
        root.removeHandler(root_capture)
    assert [e["request_id"] for e in lines(path)] == ["both"]
    assert [json.loads(m)["request_id"] for m in root_capture.messages] == ["both"]


def test_closing_the_sink_releases_its_file(tmp_path):
    sink = AuditFile(str(tmp_path / "audit.log"))
    fd = sink.stream.fileno()
    sink.close()
    with pytest.raises(OSError):
        os.fstat(fd)
