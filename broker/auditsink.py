"""Where audit lines go: a file (logging's WatchedFileHandler) or a stream (its StreamHandler).

Both are the standard library's handlers, so the `broker.audit` logger stays the one place where
operators route audit events and rotation works as it always did. Each also takes an already
formatted line directly: when the broker's own handler is that logger's only one, `audit.emit`
writes through `write_line` instead of building a LogRecord and walking the handler chain, which
costs more than the event itself (`bench/RESULTS.md`). Any other routing an operator or a test
configures goes through logging as usual.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from typing import IO, Any

# Audit lines name repositories and subjects: not secrets, but nobody else's business.
FILE_MODE = 0o640


class AuditSink(logging.StreamHandler[IO[str]]):
    """The broker's audit handler: `write_line(line)` does what `emit` does with a record whose
    message is that whole line."""

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


def direct_sink(logger: logging.Logger) -> AuditSink | None:
    """The logger's own audit handler if writing to it directly is exactly what logging would do."""
    handlers = logger.handlers
    if len(handlers) != 1 or logger.filters or logger.propagate:
        return None
    sink = handlers[0]
    if not isinstance(sink, AuditSink) or sink.filters or sink.level > logging.INFO:
        return None
    return sink
