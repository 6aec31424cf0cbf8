"""Property-based fuzzing (hypothesis) of what attacker or operator input reaches: the token parser,
the verifier behind it, the claim matchers, and the config loader. Any input gives a value or the
module's own clean error, never another exception.

Examples per property: FUZZ_EXAMPLES (default 200, a few seconds each; raise it for a long run).
"""

from __future__ import annotations

import json
import os
import re
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broker import jose, strictjson
from broker.claims import GITHUB, GITLAB, SCHEMAS
from broker.config import ConfigError, build_config
from broker.errors import BrokerError, InvalidToken
from broker.policy import compile_condition, evaluate
from broker.sandbox.issuer import LocalIssuer, b64url, github_claims

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
b64_alphabet = string.ascii_letters + string.digits + "-_"


def segment(data: st.SearchStrategy[bytes]) -> st.SearchStrategy[str]:
    return data.map(b64url)


json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=8)
json_bytes = json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200)
header_objects = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "ES256", "none", "HS256", ""]) | st.text(max_size=8)},
    optional={
        "kid": st.text(max_size=20) | json_values,
        "typ": st.sampled_from(["JWT", "at+jwt", "x"]) | json_values,
        "crit": json_values,
        "jku": st.text(max_size=10),
        "b64": st.booleans(),
    },
)

tokens = (
    st.text(max_size=300)
    | st.text(alphabet=b64_alphabet + ".=+/ ", max_size=300)
    | st.tuples(segment(json_bytes), segment(json_bytes), segment(st.binary(max_size=80))).map(".".join)
    | st.tuples(
        segment(header_objects.map(lambda h: json.dumps(h).encode())),
        segment(json_objects.map(lambda c: json.dumps(c).encode())),
        st.text(alphabet=b64_alphabet, max_size=90),
    ).map(".".join)
)


@FUZZ
@given(tokens)
def test_parse_gives_a_token_or_invalid_token(token: str) -> None:
    try:
        parsed = jose.parse(token)
    except InvalidToken:
        return
    assert isinstance(parsed.header, dict) and isinstance(parsed.claims, dict)
    assert isinstance(parsed.header["alg"], str) and parsed.header["alg"]
    assert not jose.FORBIDDEN_HEADER.intersection(parsed.header)
    assert isinstance(parsed.header["kid"], str) and 0 < len(parsed.header["kid"]) <= 256


@FUZZ
@given(
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.text(alphabet='[]{}":,0123456789.eE-tfnrualse ', max_size=300).map(str.encode)
)
def test_strict_json_gives_a_value_or_value_error(data: bytes) -> None:
    try:
        strictjson.loads(data)
    except ValueError:
        pass


def test_strict_json_refuses_nesting_far_beyond_the_limits_cleanly() -> None:
    with pytest.raises(ValueError):
        strictjson.loads("[" * 100_000 + "]" * 100_000)


# -- the verifier behind the parser: validly signed tokens with arbitrary claims -------------------


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalIssuer, Any]]:
    from broker.jwks import KeyCache
    from broker.verify import TokenVerifier

    key_path = tmp_path_factory.mktemp("fuzzkey") / "k.pem"
    from broker.keys import write_private_key

    write_private_key(key_path, "ES256")
    with LocalIssuer() as issuer:
        config = build_config(
            {
                "server": {"issuer": "https://broker.example", "signing_keys": [key_path.name]},
                "providers": {"github": {"issuer": issuer.url, "type": "github"}},
                "roles": {
                    "r": {
                        "cloud": "aws",
                        "aws": {
                            "role_arn": "arn:aws:iam::123456789012:role/r",
                            "session_tags": {"repo": "{repository}", "who": "{actor}"},
                        },
                        "allow": [
                            {
                                "provider": "github",
                                "claims": {
                                    "repository_id": "892734123",
                                    "ref": {"glob": "refs/heads/*"},
                                    "job_workflow_ref": {"regex": "octo-org/.*@refs/heads/main"},
                                },
                            }
                        ],
                    }
                },
            },
            base_dir=key_path.parent,
        )
        cache = KeyCache(issuer.url)
        assert cache.refresh()
        yield issuer, (config, TokenVerifier(config, {"github": cache}))


@FUZZ
@given(
    overrides=st.dictionaries(
        st.sampled_from(sorted(GITHUB.known) + ["x", "SUB", ""]), json_values, max_size=6
    ),
    removed=st.sets(
        st.sampled_from(sorted(GITHUB.required | {"sub", "aud", "exp", "iat", "jti"})), max_size=2
    ),
)
def test_any_signed_claims_verify_or_are_refused_and_policy_never_crashes(
    signed: Any, overrides: dict[str, Any], removed: set[str]
) -> None:
    from broker.assertion import ci_context
    from broker.clouds import Grant
    from broker.clouds.aws import render_tags, session_name

    issuer, (config, verifier) = signed
    claims = github_claims(aud="https://broker.example", iss=issuer.url)
    claims.update(overrides)
    for name in removed:
        claims.pop(name, None)
    try:
        verified = verifier.verify(issuer.mint(claims))
    except BrokerError as exc:
        assert 400 <= exc.status < 600 and exc.status != 500
        return
    role = config.roles["r"]
    _, decision = config.decide("r", verified.provider, verified.claims, trace=True)
    decision.summary()
    context = ci_context("github", verified.claims, GITHUB.neutral)
    assert all(isinstance(v, str) for v in context.values())
    grant = Grant(
        role="r",
        provider="github",
        claims=verified.claims,
        context=context,
        duration=None,
        mint_assertion=lambda a, e: "",
    )
    assert re.fullmatch(r"[\w+=,.@-]{2,64}", session_name(grant), re.ASCII)
    try:
        tags = render_tags(role.settings.session_tags, grant)
    except BrokerError as exc:
        assert exc.status == 403
    else:
        assert all(len(v) <= 256 for v in tags.values())


# -- claim matchers --------------------------------------------------------------------------------

glob_text = st.text(alphabet="ab/:*.-[]()+?^$|\\{}", min_size=1, max_size=20)


@FUZZ
@given(pattern=glob_text, text=st.text(alphabet="ab/:*.-[]()+?^$|\\{}", max_size=24))
def test_a_glob_star_never_crosses_a_slash_or_colon(pattern: str, text: str) -> None:
    assume("**" not in pattern)
    condition = compile_condition("ref", {"glob": pattern}, GITHUB)
    if condition.matches_text(text):
        literal = pattern.replace("*", "")
        assert text.count("/") == literal.count("/")
        assert text.count(":") == literal.count(":")


@FUZZ
@given(pattern=glob_text, fills=st.lists(st.text(alphabet="ab.-x", max_size=5), min_size=20, max_size=20))
def test_a_glob_matches_every_filling_of_its_stars_within_a_segment(pattern: str, fills: list[str]) -> None:
    assume("**" not in pattern)
    pieces = pattern.split("*")
    text = "".join(p + (fills[i] if i < len(pieces) - 1 else "") for i, p in enumerate(pieces))
    assert compile_condition("ref", {"glob": pattern}, GITHUB).matches_text(text)


@FUZZ
@given(
    literal=st.text(alphabet="ab/:.-[]()+?^$|\\{}", min_size=1, max_size=12),
    prefix=st.text(alphabet="ab/:", max_size=4),
    suffix=st.text(alphabet="ab/:", max_size=4),
)
def test_a_glob_without_stars_is_an_exact_match(literal: str, prefix: str, suffix: str) -> None:
    assume("*" not in literal)
    condition = compile_condition("ref", {"glob": literal}, GITHUB)
    assert condition.matches_text(literal)
    assert condition.matches_text(prefix + literal + suffix) == (prefix + suffix == "")


@FUZZ
@given(
    words=st.lists(st.text(alphabet="abc/:", min_size=1, max_size=6), min_size=1, max_size=4),
    prefix=st.text(alphabet="abc/:x", max_size=3),
    suffix=st.text(alphabet="abc/:x", max_size=3),
)
def test_a_regex_is_anchored_at_both_ends_even_with_alternation(
    words: list[str], prefix: str, suffix: str
) -> None:
    pattern = "|".join(re.escape(w) for w in words)
    condition = compile_condition("ref", {"regex": pattern}, GITHUB)
    for word in words:
        assert condition.matches_text(word)
        text = prefix + word + suffix
        assert condition.matches_text(text) == (text in words)


@FUZZ
@given(
    pattern=st.text(max_size=20),
    text=st.text(max_size=30),
    claim=st.sampled_from(["ref", "repository", "sub"]),
)
def test_a_regex_condition_is_compiled_or_refused_and_is_a_fullmatch(
    pattern: str, text: str, claim: str
) -> None:
    try:
        condition = compile_condition(claim, {"regex": pattern}, GITHUB)
    except ValueError:
        return
    assert condition.matches_text(text) == (condition.compiled.fullmatch(text) is not None)  # type: ignore[union-attr]
    if condition.matches_text(text):
        assert re.fullmatch(pattern, text, condition.compiled.flags) is not None  # type: ignore[union-attr]


@FUZZ
@given(
    raw=json_values,
    claim=st.sampled_from(sorted(GITHUB.known) + ["Weird", ""]),
    claims=st.dictionaries(st.sampled_from(sorted(GITLAB.known)), json_values, max_size=6),
    schema=st.sampled_from(sorted(SCHEMAS)),
)
def test_any_condition_compiles_or_is_refused_and_any_claims_evaluate(
    raw: Any, claim: str, claims: dict[str, Any], schema: str
) -> None:
    from broker.policy import Rule

    try:
        condition = compile_condition(claim, raw, SCHEMAS[schema])
    except ValueError:
        return
    decision = evaluate("r", (Rule(0, "p", (condition,)),), "p", SCHEMAS[schema], claims)
    assert decision.allowed == condition.check(claims, SCHEMAS[schema])[0]
    assert decision.allowed == condition.holds(claims, SCHEMAS[schema])
    assert (
        evaluate("r", (Rule(0, "p", (condition,)),), "p", SCHEMAS[schema], claims, trace=False).allowed
        == decision.allowed
    )
    decision.summary()


# -- the config loader -----------------------------------------------------------------------------

yamlish = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "memory",
            "redis://",
            "sqlite:///",
            "off",
            "https://x",
            "http://127.0.0.1:1",
            "aws",
            "github",
            "gitlab",
            "600/minute",
            "RS256",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "server",
                    "providers",
                    "roles",
                    "issuer",
                    "audience",
                    "signing_keys",
                    "replay_store",
                    "rate_limits",
                    "per_identity",
                    "per_client",
                    "type",
                    "cloud",
                    "aws",
                    "allow",
                    "claims",
                    "provider",
                    "glob",
                    "regex",
                    "role_arn",
                    "session_tags",
                    "duration",
                    "leeway",
                    "token_max_age",
                    "algorithms",
                    "jwks_uri",
                    "ca_bundle",
                ]
            )
            | st.text(max_size=8)
            | st.integers()
            | st.booleans()
            | st.none(),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from broker.keys import write_private_key

    path = tmp_path_factory.mktemp("fuzzconfig")
    write_private_key(path / "k.pem", "ES256")
    return path


def valid_config() -> dict[str, Any]:
    return {
        "server": {
            "issuer": "https://broker.example",
            "signing_keys": ["k.pem"],
            "replay_store": "memory",
            "rate_limits": {"per_identity": "10/minute", "per_client": "100/minute"},
        },
        "providers": {"github": {"issuer": "https://token.actions.githubusercontent.com", "type": "github"}},
        "roles": {
            "deploy": {
                "cloud": "aws",
                "aws": {"role_arn": "arn:aws:iam::123456789012:role/d"},
                "allow": [{"provider": "github", "claims": {"repository_id": "1"}}],
            }
        },
    }


@FUZZ
@given(data=yamlish)
def test_any_structure_is_a_config_or_a_config_error(config_dir: Path, data: Any) -> None:
    try:
        build_config(data, base_dir=config_dir)
    except ConfigError as exc:
        assert exc.findings and all(f.level == "error" for f in exc.findings)


@FUZZ
@given(
    path=st.lists(
        st.sampled_from(
            [
                "server",
                "providers",
                "roles",
                "github",
                "deploy",
                "aws",
                "allow",
                0,
                "claims",
                "rate_limits",
                "issuer",
                "replay_store",
                "type",
            ]
        ),
        min_size=1,
        max_size=5,
    ),
    value=yamlish,
)
def test_a_valid_config_with_one_value_replaced_is_a_config_or_a_config_error(
    config_dir: Path, path: list[Any], value: Any
) -> None:
    data = valid_config()
    node: Any = data
    for key in path[:-1]:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            break
    else:
        if isinstance(node, dict):
            node[path[-1]] = value
        elif isinstance(node, list) and node:
            node[0] = value
    try:
        build_config(data, base_dir=config_dir)
    except ConfigError as exc:
        assert exc.findings


@FUZZ
@given(text=st.text(max_size=400) | yamlish.map(lambda v: json.dumps(v, default=str)))
def test_any_yaml_text_is_a_config_or_a_config_error(config_dir: Path, text: str) -> None:
    from broker.config import load_config

    path = config_dir / f"c-{time.monotonic_ns()}.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError:
        pass
    finally:
        path.unlink()
