"""When a request is whole (broker.framing): the serving loop hands a request to a thread on this
answer alone, so it must never come before the last byte of a valid request (the thread would
then wait on the socket), must come at that byte, and must come at once for what gunicorn refuses.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.framing import BODY_LIMIT, HEAD_LIMIT, Progress, RequestBuffer

# Examples per property: FUZZ_EXAMPLES, as for tests/fuzz/ (`make check` takes fewer).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
HEAD = b"POST /v1/exchange HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer a.b.c\r\n"


def progress_per_byte(request: bytes) -> list[Progress]:
    buffer = RequestBuffer()
    return [buffer.feed(request[i : i + 1]) for i in range(len(request))]


def assert_whole_at_the_last_byte(request: bytes, pieces: list[int] | None = None) -> None:
    """MORE for every proper prefix, WHOLE once the last byte is in, however the bytes arrive."""
    steps = progress_per_byte(request)
    assert steps[:-1] == [Progress.MORE] * (len(request) - 1)
    assert steps[-1] is Progress.WHOLE
    if pieces:
        buffer, start = RequestBuffer(), 0
        for cut in [*sorted(set(pieces)), len(request)]:
            if start < cut:
                got = buffer.feed(request[start:cut])
                assert got is (Progress.WHOLE if cut == len(request) else Progress.MORE)
                start = cut


def test_a_request_without_a_body_is_whole_at_the_end_of_its_header_block():
    assert_whole_at_the_last_byte(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")


def test_a_body_with_a_content_length_is_whole_at_its_last_byte():
    assert_whole_at_the_last_byte(HEAD + b'Content-Length: 23\r\n\r\n{"role": "deploy-prod"}')
    assert_whole_at_the_last_byte(HEAD + b"content-length:\t0\t\r\n\r\n")


def test_a_chunked_body_is_whole_at_the_end_of_its_trailer_section():
    assert_whole_at_the_last_byte(HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert_whole_at_the_last_byte(
        HEAD + b"transfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n"
    )


def test_a_chunk_size_line_with_a_bare_lf_waits_for_its_crlf_like_gunicorn():
    request = HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n"
    steps = progress_per_byte(request)
    assert steps[:-1] == [Progress.MORE] * (len(request) - 1)
    assert steps[-1] is Progress.MALFORMED_BODY  # the line "5\nhello" is not a size


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    extension=st.sampled_from([b"", b";a", b";a=b", b' ;q="x y"']),
    trailers=st.lists(st.sampled_from([b"X-A: 1", b"Checksum: abc"]), max_size=2),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=8),
)
def test_any_valid_chunked_body_is_whole_exactly_at_its_last_byte(chunks, extension, trailers, cuts):
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks)
    body += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
    request = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body
    assert_whole_at_the_last_byte(request, [c for c in cuts if c < len(request)])
    assert gunicorn_body(request) == b"".join(chunks)


@settings(max_examples=max(1, EXAMPLES // 2), deadline=None)
@given(body=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=8))
def test_any_content_length_body_is_whole_exactly_at_its_last_byte(body, cuts):
    request = HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
    assert_whole_at_the_last_byte(request, [c for c in cuts if c < len(request)])
    assert gunicorn_body(request) == body


def gunicorn_body(request: bytes) -> bytes:
    """The body as gunicorn reads it from exactly these bytes (the thread's view)."""
    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser

    from broker.server import apply_options, gunicorn_options

    cfg = Config()
    apply_options(cfg, {k: v for k, v in gunicorn_options("127.0.0.1:0", 1).items() if k != "logconfig_dict"})
    parsed = next(RequestParser(cfg, [request], ("127.0.0.1", 1)))
    return parsed.body.read()


def test_what_gunicorn_refuses_is_handed_over_at_the_end_of_the_header_block():
    for framing in (
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",  # both framings
        b"Content-Length: 5\r\nContent-Length: 5\r\n",
        b"Content-Length: 5x\r\n",
        b"Content-Length: -1\r\n",
    ):
        buffer = RequestBuffer()
        assert buffer.feed(HEAD + framing + b"\r\n") is Progress.WHOLE, framing


def test_a_malformed_chunk_is_refused_at_once():
    # The worker answers it and closes: the bytes after it cannot be framed, and gunicorn would
    # answer them with a second, unrequested 400 on the same connection.
    for body in (b"zz\r\n", b"5\r\nhelloXX", b"\r\n"):
        buffer = RequestBuffer()
        feed = buffer.feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body)
        assert feed is Progress.MALFORMED_BODY, body


def test_a_chunk_announced_over_the_body_limit_is_too_large_before_it_arrives():
    buffer = RequestBuffer()
    feed = buffer.feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n")
    assert feed is Progress.BODY_TOO_LARGE


def test_a_header_block_over_the_limit_is_too_large_before_it_ends():
    buffer = RequestBuffer()
    assert buffer.feed(HEAD + b"X-Padding: " + b"a" * (HEAD_LIMIT - len(HEAD) - 11)) is Progress.MORE
    assert buffer.feed(b"a") is Progress.HEAD_TOO_LARGE


def test_a_declared_body_over_the_limit_is_too_large_before_it_arrives():
    buffer = RequestBuffer()
    assert buffer.feed(HEAD + b"Content-Length: %d\r\n\r\n" % BODY_LIMIT) is Progress.MORE
    for length in (b"%d" % (BODY_LIMIT + 1), b"9" * 5000, b"0" * 20 + b"%d" % (BODY_LIMIT + 1)):
        buffer = RequestBuffer()
        assert buffer.feed(HEAD + b"Content-Length: " + length + b"\r\n\r\n") is Progress.BODY_TOO_LARGE


def test_a_chunked_body_over_the_limit_is_too_large_however_small_its_chunks():
    buffer = RequestBuffer()
    assert buffer.feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\n") is Progress.MORE
    progress = Progress.MORE
    while progress is Progress.MORE:
        progress = buffer.feed(b"1\r\nx\r\n")
    assert progress is Progress.BODY_TOO_LARGE
    assert len(buffer.data) - buffer.head_end <= BODY_LIMIT + 6


def test_a_bare_lf_header_block_is_handed_over_at_once():
    assert RequestBuffer().feed(b"GET / HTTP/1.1\nHost: x\n\n") is Progress.WHOLE


def test_100_continue_is_expected_only_from_http_1_1_clients():
    buffer = RequestBuffer()
    buffer.feed(HEAD + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert buffer.expects_continue
    buffer = RequestBuffer()
    buffer.feed(HEAD.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert not buffer.expects_continue


def test_bytes_pipelined_behind_a_request_do_not_change_where_it_ends():
    one = b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n"
    buffer = RequestBuffer()
    assert buffer.feed(one + one[:10]) is Progress.WHOLE
    assert buffer.head_end == len(one)
