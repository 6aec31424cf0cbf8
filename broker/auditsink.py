"""Where audit lines go (`server.audit.sink`): stdout, a file, or syslog.

A stream and a file are the standard library's StreamHandler and WatchedFileHandler, so the
`broker.audit` logger stays the one place where operators route audit events and rotation works
as it always did. Syslog (`AuditSyslog`, RFC 5424 over UDP, TCP or a unix socket: `broker.syslog`)
is sent by a background thread of each worker, so a slow or absent receiver never holds up an
exchange: up to `SYSLOG_QUEUE` lines wait while it is away (oldest kept, newer ones dropped and
counted in `ci_broker_background_dropped_total{queue="audit_syslog"}`).

Each sink also takes an already formatted line directly: when the broker's own handler is that
logger's only one, `audit.emit` writes through `write_line` instead of building a LogRecord and
walking the handler chain, which costs more than the event itself (`bench/RESULTS.md`). Any other
routing an operator or a test configures goes through logging as usual.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import time
from typing import IO, Any

from broker.background import BackgroundQueue
from broker.syslog import Rfc5424, SyslogAddress, SyslogConnection

# Audit lines name repositories and subjects: not secrets, but nobody else's business.
FILE_MODE = 0o640
SYSLOG_QUEUE = 10000
SYSLOG_RETRY_MAX = 30.0


class LineHandler(logging.Handler):
    """An audit handler that also takes an already formatted line: `write_line(line)` does what
    `emit` does with a record whose message is that whole line."""

    def write_line(self, line: str) -> None:
        raise NotImplementedError


class AuditSink(LineHandler, logging.StreamHandler[IO[str]]):
    """A stream or file sink."""

    def write_line(self, line: str) -> None:
        # The lock logging holds around emit (Handler.handle takes it the same way).
        self.acquire()
        try:
            self._before_write()
            self.stream.write(line + self.terminator)
            self.flush()
        finally:
            self.release()

    def _before_write(self) -> None:
        pass


class AuditStream(AuditSink):
    """Audit lines on a stream (stdout by default), one flushed write each."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)


class AuditFile(AuditSink, logging.handlers.WatchedFileHandler):
    """Audit lines appended to a file that logrotate may move or delete (reopened, no signal)."""

    def __init__(self, path: str) -> None:
        logging.handlers.WatchedFileHandler.__init__(self, path, encoding="utf-8")

    def _before_write(self) -> None:
        # Under the handler's lock, as in WatchedFileHandler.emit: the stream a reopen closes
        # cannot be written by another thread meanwhile.
        self.reopenIfNeeded()

    def _open(self) -> Any:
        # As FileHandler opens it (append, one write per flushed line, so several workers can
        # share the file), but created readable by owner and group only.
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


class AuditSyslog(LineHandler):
    """Audit lines to syslog, sent by a background thread of this process (see the module doc).

    A line waits in the queue until the receiver takes it: after an error the connection is
    reopened, with a backoff from 0.1 s up to 30 s, and the line is sent again. Over UDP an absent
    receiver is not noticed (that is UDP); use TCP or a local relay where every line matters.
    """

    def __init__(self, address: SyslogAddress, facility: str, *, capacity: int = SYSLOG_QUEUE) -> None:
        super().__init__()
        self.address = address
        self.facility = facility
        self._connection = SyslogConnection(address)
        self._framer: Rfc5424 | None = None
        self._down = False
        self.queue: BackgroundQueue[tuple[float, str]] = BackgroundQueue(
            "audit_syslog", lambda lines: self._send(lines[0]), capacity=capacity
        )

    def write_line(self, line: str) -> None:
        self.queue.offer((time.time(), line))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def _send(self, item: tuple[float, str]) -> None:
        if self._framer is None:  # in the sending process: its own pid in every message
            self._framer = Rfc5424(self.facility)
        message = self._framer.message(item[1], item[0])
        delay = 0.1
        while True:
            try:
                self._connection.send(message)
            except OSError as exc:
                if not self._down:
                    logging.getLogger("broker.auditsink").warning(
                        "audit syslog %s unreachable (%s); lines wait in memory (up to %d)",
                        self.address.describe(),
                        type(exc).__name__,
                        self.queue.capacity,
                    )
                    self._down = True
                if not self.queue.sleep(delay):
                    self.queue.dropped("shutdown")
                    return
                delay = min(SYSLOG_RETRY_MAX, delay * 2)
                continue
            if self._down:
                logging.getLogger("broker.auditsink").info(
                    "audit syslog %s reachable again", self.address.describe()
                )
                self._down = False
            return

    def flush(self) -> None:
        self.queue.flush(5.0)

    def close(self) -> None:
        self.queue.close()
        self._connection.close()
        super().close()


def direct_sink(logger: logging.Logger) -> LineHandler | None:
    """The logger's own audit handler if writing to it directly is exactly what logging would do."""
    handlers = logger.handlers
    if len(handlers) != 1 or logger.filters or logger.propagate:
        return None
    sink = handlers[0]
    if not isinstance(sink, LineHandler) or sink.filters or sink.level > logging.INFO:
        return None
    return sink
