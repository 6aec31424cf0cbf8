"""The client's JSON reader (awk, inside ci-broker.sh) under every awk its users have.

mawk is debian's and ubuntu's awk, gawk is Git Bash's (GitHub's Windows runners), BWK awk is
macOS's (original-awk here), busybox awk is alpine's. The reader must accept exactly what a
strict JSON parser accepts for the broker's answers and agree with Python's json on the values.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import CLIENT, require_tool

PROGRAM = re.search(r"_cib_awk_json='(.*?)'\n", CLIENT.read_text(), re.S).group(1)
AWKS = {"mawk": ["mawk"], "gawk": ["gawk"], "bwk": ["original-awk"], "busybox": ["busybox", "awk"]}

FOUND, INVALID, ABSENT, NOT_A_STRING = 0, 2, 3, 4


@pytest.fixture(params=list(AWKS), ids=list(AWKS))
def awk(request) -> list[str]:
    argv = AWKS[request.param]
    require_tool(argv[0])
    return argv


def read(awk: list[str], document: str | bytes, want: str) -> tuple[int, bytes]:
    data = document.encode() if isinstance(document, str) else document
    proc = subprocess.run(
        [*awk, "-v", f"want={want}", PROGRAM],
        input=data,
        capture_output=True,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    value = proc.stdout[:-1] if proc.returncode == FOUND else b""
    if proc.returncode == FOUND:
        assert proc.stdout.endswith(b"x"), "the value is followed by the x sentinel"
    return proc.returncode, value


ANSWER = {
    "role": "deploy-prod",
    "cloud": "aws",
    "expires_at": "2030-01-01T00:00:00Z",
    "credentials": {
        "access_key_id": "ASIAEXAMPLE",
        "secret_access_key": "a/b+c=",
        "session_token": "x" * 2000,
        "region": "eu-west-1",
    },
}


def test_reads_the_brokers_answer(awk) -> None:
    document = json.dumps(ANSWER, indent=2)
    assert read(awk, document, "cloud") == (FOUND, b"aws")
    assert read(awk, document, "credentials.secret_access_key") == (FOUND, b"a/b+c=")
    assert read(awk, document, "credentials.session_token") == (FOUND, b"x" * 2000)
    assert read(awk, document, "credentials.nope") == (ABSENT, b"")
    assert read(awk, document, "credentials") == (NOT_A_STRING, b"")


def test_escapes_decode_like_json(awk) -> None:
    document = r'{"a": "q\"b\\s\/n\nt\tr\rA\u0041e\u00e9\u20acsmile\ud83d\ude00"}'
    assert read(awk, document, "a") == (FOUND, json.loads(document)["a"].encode())


def test_other_values_are_parsed_and_skipped(awk) -> None:
    document = (
        '{"n": -12.5e+3, "z": 0, "t": true, "f": false, "x": null, "l": [1, "a", {"k": []}],'
        ' "e": {}, "s": ""}'
    )
    assert read(awk, document, "s") == (FOUND, b"")
    for name in ("n", "z", "t", "f", "x", "l", "e"):
        assert read(awk, document, name)[0] == NOT_A_STRING
    assert read(awk, document, "l[2].k")[0] == NOT_A_STRING
    assert read(awk, document, "l[1]") == (FOUND, b"a")


REFUSED = {
    "empty": "",
    "top-level-array": '["a"]',
    "top-level-string": '"a"',
    "trailing-data": '{"a":"b"} {"a":"c"}',
    "trailing-comma": '{"a":"b",}',
    "duplicate-key": '{"a":"b","a":"c"}',
    "dotted-key-shadowing-a-path": '{"credentials.x":"a","credentials":{"x":"b"}}',
    "raw-newline-in-string": '{"a":"b\nc"}',
    "raw-tab-in-string": '{"a":"b\tc"}',
    "raw-control-character": '{"a":"b\x01c"}',
    "bad-escape": r'{"a":"\x41"}',
    "short-unicode-escape": r'{"a":"\u41"}',
    "nul-escape": r'{"a":"\u0000"}',
    "lone-high-surrogate": r'{"a":"\ud83d"}',
    "lone-low-surrogate": r'{"a":"\ude00"}',
    "unterminated-string": '{"a":"b}',
    "single-quotes": "{'a':'b'}",
    "bare-word": '{"a":b}',
    "leading-zero": '{"a":01}',
    "leading-plus": '{"a":+1}',
    "bare-fraction": '{"a":.5}',
    "nan": '{"a":NaN}',
    "comment": '{"a":"b"/*c*/}',
    "missing-colon": '{"a" "b"}',
    "too-deep": '{"a":' * 9 + '"x"' + "}" * 9,
}


@pytest.mark.parametrize("document", REFUSED.values(), ids=REFUSED.keys())
def test_refuses_what_strict_json_refuses(awk, document: str) -> None:
    assert read(awk, document, "a")[0] == INVALID


def test_nesting_up_to_the_limit_is_fine(awk) -> None:
    document = '{"a":' * 8 + '"x"' + "}" * 8
    assert read(awk, document, "a.a.a.a.a.a.a.a") == (FOUND, b"x")


def test_a_large_answer_is_read_quickly(awk) -> None:
    big = {
        "role": "r",
        "cloud": "gcp",
        "expires_at": "2030-01-01T00:00:00Z",
        "credentials": {"access_token": "ya29." + "A" * 60_000, "token_type": "Bearer"},
    }
    assert (
        read(awk, json.dumps(big), "credentials.access_token")[1]
        == big["credentials"]["access_token"].encode()
    )


_text = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)), max_size=30
)
_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=8)
_leaf = st.one_of(
    _text, st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False, allow_infinity=False)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fields=st.dictionaries(
        _key, st.one_of(_leaf, st.dictionaries(_key, _leaf, max_size=4)), min_size=1, max_size=6
    ),
    ensure_ascii=st.booleans(),
)
def test_agrees_with_python_json(awk, fields: dict, ensure_ascii: bool) -> None:
    document = json.dumps(fields, ensure_ascii=ensure_ascii)
    for key, value in fields.items():
        paths = [(key, value)]
        if isinstance(value, dict):
            paths = [(f"{key}.{k}", v) for k, v in value.items()]
        for path, leaf in paths:
            status, got = read(awk, document, path)
            if isinstance(leaf, str):
                assert (status, got) == (FOUND, leaf.encode()), (document, path)
            else:
                assert status == NOT_A_STRING, (document, path)
