"""What the broker sends AWS as names and tags is in AWS's ASCII alphabet, whatever the CI claims.

STS accepts a RoleSessionName of ASCII `[\\w+=,.@-]`, 2 to 64 characters; Python's `\\w` also
matches Unicode letters and digits, so a claim holding one used to reach STS and come back a 502.
"""

from __future__ import annotations

import re
import sys

import pytest

from broker.clouds import Grant
from broker.clouds.aws import TagTemplate, render_tags, session_name

SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
TAG_VALUE = re.compile(r"[\w.:/=+@ -]{0,256}", re.ASCII)
# Every code point but the surrogates (which no JSON text decodes to a str the broker keeps).
CODE_POINTS = [c for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
CHUNK = 50


def grant(repository: str, run_id: str = "1") -> Grant:
    return Grant(
        role="r",
        provider="github",
        claims={"repository": repository},
        context={"provider": "github", "run_id": run_id, "repository": repository},
        duration=None,
        mint_assertion=lambda audience, extra: "",
    )


def chunks() -> list[str]:
    return ["".join(chr(c) for c in CODE_POINTS[i : i + CHUNK]) for i in range(0, len(CODE_POINTS), CHUNK)]


def test_every_code_point_becomes_a_session_name_sts_accepts():
    for text in chunks():
        name = session_name(grant(text, run_id=text))
        assert SESSION_NAME.fullmatch(name), (text.encode("unicode_escape")[:80], name)


def test_every_code_point_becomes_a_tag_value_aws_accepts():
    tags = (TagTemplate("repository", "{repository}", ("repository",)),)
    for text in chunks():
        value = render_tags(tags, grant(text))["repository"]
        assert TAG_VALUE.fullmatch(value), (text.encode("unicode_escape")[:80], value)


@pytest.mark.parametrize("letter", ["é", "ß", "Ω", "中", "١", "𝟘", "ǅ"])
def test_unicode_letters_and_digits_are_replaced_not_kept(letter):
    assert letter not in session_name(grant(f"octo-org/app{letter}"))


def test_ascii_names_pass_unchanged():
    assert session_name(grant("octo-org/app.v2", run_id="42")) == "github-42-octo-org-app.v2"


def test_a_non_ascii_repository_is_exchanged_not_a_502(sandbox, broker):
    # The local STS enforces STS's own RoleSessionName pattern, as AWS does.
    response = sandbox.exchange(sandbox.github_token(repository="octo-org/dépôt", run_id="٣٤٥"))
    assert response.status_code == 200, response.text
    assert SESSION_NAME.fullmatch(sandbox.sts.calls[-1]["RoleSessionName"])
