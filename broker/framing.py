"""When the bytes received so far hold one whole HTTP/1.1 request (RFC 9112 section 6).

The serving loop (`broker.worker`) reads each request into a `RequestBuffer` and hands it to a
thread only once this says it is whole, so a client that stalls never holds a thread. This module
only decides *when*: gunicorn's parser, in the thread, remains the one that frames and checks the
request, on exactly the bytes received. The two can therefore never disagree about where a
request ends, only about when to stop waiting, and every rule below errs towards waiting longer
than gunicorn would (never shorter): a request gunicorn would refuse is handed over as soon as it
is certain to be refused, and a request this misjudges as whole is read further by gunicorn with
a socket timeout (`broker.worker.IO_TIMEOUT`).

Costs are linear in the bytes received: each call scans only what is new, so a client trickling
one byte at a time costs one small scan per byte.
"""

from __future__ import annotations

import enum
import re

HEAD_LIMIT = 32 * 1024  # request line plus header fields; the broker's token cap is 16 KiB
BODY_LIMIT = 16 * 1024  # body bytes as sent (chunk framing included); the app's own cap is 4 KiB

# Header lines that decide the body's framing. A header line always follows a CRLF; a name with
# anything between it and the colon is not one gunicorn accepts, so it is not looked for either.
_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding):([^\r\n]*)", re.IGNORECASE)
_EXPECT_CONTINUE = re.compile(rb"\r\nexpect:[ \t]*100-continue[ \t]*(?=\r\n|$)", re.IGNORECASE)
_HEX = frozenset(b"0123456789abcdefABCDEF")


class Progress(enum.Enum):
    MORE = "more"  # keep reading
    WHOLE = "whole"  # hand it to gunicorn (whole, or certain to be refused by gunicorn)
    HEAD_TOO_LARGE = "head_too_large"
    BODY_TOO_LARGE = "body_too_large"
    # A chunked body that cannot be valid: answered and closed by the worker, since the bytes
    # after it cannot be framed (gunicorn would answer a second, unrequested 400 on the connection).
    MALFORMED_BODY = "malformed_body"


class RequestBuffer:
    """One request's bytes as they arrive (and whatever a client pipelined behind it)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.head_end = -1  # index just past the blank line that ends the header block
        self.expects_continue = False  # the client waits for "100 Continue" before its body
        self._length = 0  # Content-Length, when the body has one
        self._chunks: _ChunkedBody | None = None

    @property
    def head_complete(self) -> bool:
        return self.head_end >= 0

    def feed(self, data: bytes) -> Progress:
        start = len(self.data)
        self.data += data
        if self.head_end < 0:
            progress = self._find_head(start)
            if progress is not Progress.MORE or self.head_end < 0:
                return progress
            data = bytes(self.data[self.head_end :])
        if self._chunks is not None:
            ended = self._chunks.feed(data)
            if ended is False:
                return Progress.MALFORMED_BODY
            if self._chunks.received > BODY_LIMIT or self._chunks.announced > BODY_LIMIT:
                return Progress.BODY_TOO_LARGE
            return Progress.WHOLE if ended else Progress.MORE
        return Progress.WHOLE if len(self.data) - self.head_end >= self._length else Progress.MORE

    def _find_head(self, start: int) -> Progress:
        end = self.data.find(b"\r\n\r\n", max(0, start - 3))
        if end < 0:
            if self.data.find(b"\n\n", max(0, start - 1)) >= 0:
                return Progress.WHOLE  # bare LF line ends, which gunicorn refuses with a 400
            return Progress.HEAD_TOO_LARGE if len(self.data) > HEAD_LIMIT else Progress.MORE
        if end + 4 > HEAD_LIMIT:
            return Progress.HEAD_TOO_LARGE
        self.head_end = end + 4
        head = bytes(self.data[:end])
        lengths: list[bytes] = []
        chunked = False
        for name, value in _FRAMING.findall(head):
            if name.lower() == b"transfer-encoding":
                chunked = True
            else:
                lengths.append(value.strip(b" \t"))
        if chunked:
            if lengths:
                return Progress.WHOLE  # both framings: gunicorn refuses it (request smuggling)
            self._chunks = _ChunkedBody()
        elif len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            return Progress.WHOLE  # gunicorn refuses several or malformed lengths
        elif lengths:
            digits = lengths[0].lstrip(b"0")
            if len(digits) > len(str(BODY_LIMIT)) or int(digits or b"0") > BODY_LIMIT:
                return Progress.BODY_TOO_LARGE
            self._length = int(digits or b"0")
        request_line = head.removeprefix(b"\r\n").split(b"\r\n", 1)[0]
        self.expects_continue = request_line.endswith(b" HTTP/1.1") and bool(_EXPECT_CONTINUE.search(head))
        return Progress.MORE


class _ChunkedBody:
    """Follows a chunked body's framing (RFC 9112 section 7.1) without keeping its data.

    Where gunicorn would wait for more bytes, so does this, or it would hand gunicorn a request
    that gunicorn then waits on: a chunk-size line ends at a CRLF (a bare LF inside one makes it
    invalid only once the CRLF comes), and a size is read up to the line's first ";" with spaces
    allowed before it (more lenient than gunicorn, which only means waiting longer).
    """

    def __init__(self) -> None:
        self.received = 0
        self.announced = 0  # the chunk sizes declared so far: a body over the limit shows here first
        self._state = "size"
        self._line = bytearray()  # the chunk-size line, the CRLF after data, or the trailers
        self._left = 0  # data bytes of the current chunk still to come

    def feed(self, data: bytes) -> bool | None:
        """True when the body has ended, False when it cannot be valid, None to read on."""
        self.received += len(data)
        i, n = 0, len(data)
        while i < n:
            if self._state == "data":
                step = min(self._left, n - i)
                self._left -= step
                i += step
                if self._left == 0:
                    self._state = "crlf"
            elif self._state == "crlf":  # after a chunk's data, possibly split across reads
                piece = data[i : i + 2 - len(self._line)]
                self._line += piece
                i += len(piece)
                if not b"\r\n".startswith(self._line):
                    return False
                if len(self._line) == 2:
                    self._line.clear()
                    self._state = "size"
            else:  # a chunk-size line, or the trailer section, read a line at a time
                newline = data.find(b"\n", i)
                if newline < 0:
                    self._line += data[i:]
                    return None
                self._line += data[i : newline + 1]
                i = newline + 1
                if not self._line.endswith(b"\r\n"):
                    continue  # a bare LF: gunicorn reads on to a CRLF, then refuses
                if self._state == "trailer":
                    if self._line == b"\r\n" or self._line.endswith(b"\r\n\r\n"):
                        return True
                elif not self._end_size_line():
                    return False
        return None

    def _end_size_line(self) -> bool:
        line = bytes(self._line[:-2])
        self._line.clear()
        size = line.split(b";", 1)[0].rstrip(b" \t")
        if not size or not _HEX.issuperset(size):
            return False
        self._left = int(size, 16)
        self.announced += self._left
        self._state = "data" if self._left else "trailer"
        return True
