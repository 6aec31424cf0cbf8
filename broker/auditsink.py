"""Where audit lines go: a file, appended to and reopened when logrotate moves it, or a stream.

`AuditSink` is a logging handler, so the `broker.audit` logger stays the one place where operators
route audit events. When it is that logger's only handler, `audit.emit` hands it each line
directly instead of building a LogRecord and walking the handler chain, which costs more than
the event itself (`bench/RESULTS.md`). Any other routing an operator or a test configures goes
through logging as usual.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import IO

# Audit lines name repositories and subjects: not secrets, but nobody else's business.
FILE_MODE = 0o640


class AuditSink(logging.Handler):
    """One audit line per write: to `path` (appended) or to `stream` (stdout by default)."""

    def __init__(self, path: str | None = None, stream: IO[str] | None = None) -> None:
        super().__init__(logging.INFO)
        if (path is None) == (stream is None):
            raise ValueError("an audit sink writes to a path or to a stream")
        self.path = path
        self.stream = stream
        self._fd = -1
        self._identity: tuple[int, int] | None = None
        self._write_lock = threading.Lock()
        if path is not None:
            self._open()

    def write_line(self, line: str) -> None:
        """Write one line; raises OSError if it could not be written whole."""
        if self.stream is not None:
            with self._write_lock:
                self.stream.write(line + "\n")
                self.stream.flush()
            return
        data = (line + "\n").encode("utf-8", "surrogatepass")
        # The lock spans the rotation check and the write: a descriptor closed by a reopen in
        # another thread could otherwise be reused by an unrelated file before this write lands.
        with self._write_lock:
            self._reopen_if_moved()
            # O_APPEND and one write per line keep lines whole when several workers share the file.
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(record.getMessage())
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self._write_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        super().close()

    def _open(self) -> None:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        stat = os.fstat(fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)

    def _reopen_if_moved(self) -> None:
        # What logging's WatchedFileHandler does: a rotated (renamed or deleted) file is replaced
        # by a new one at the same path, so the broker needs no signal from logrotate.
        assert self.path is not None
        try:
            stat = os.stat(self.path)
            moved = (stat.st_dev, stat.st_ino) != self._identity
        except FileNotFoundError:
            moved = True
        if moved or self._fd < 0:
            self._open()


def direct_sink(logger: logging.Logger) -> AuditSink | None:
    """The logger's `AuditSink` if writing to it directly is exactly what logging would do."""
    handlers = logger.handlers
    if len(handlers) != 1 or logger.filters or logger.propagate:
        return None
    sink = handlers[0]
    if type(sink) is not AuditSink or sink.filters or sink.level > logging.INFO:
        return None
    return sink
