"""The verifying STS judges a role by the trust policy in moto's IAM, as AWS STS does (issue 21).

test_tf_aws_apply.py relies on this to prove the AWS module's trust works with the broker; these
tests prove the stand-in refuses what AWS would refuse, one cause at a time: a token from an
issuer IAM has no provider for, an audience the provider does not list, a bad signature, a
policy naming another provider or another subject, session tags without sts:TagSession, a
longer session than the role allows. The policy evaluator fails closed on what it does not
implement.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from broker.sandbox.aws import LocalSTS, trust_policy_allows
from broker.sandbox.issuer import IssuerKeyPair, LocalIssuer

from .workspace import moto_client

HOST = "issuer.ci-broker.test"
PROVIDER_ARN = f"arn:aws:iam::123456789012:oidc-provider/{HOST}"
CONTEXT = {f"{HOST}:aud": "sts.amazonaws.com", f"{HOST}:sub": "role:deploy"}
TAGS = {"principal_tags": {"repository": ["octo-org/octo-repo"]}}


class NamedIssuer(LocalIssuer):
    """A local issuer that calls itself by an https name without a port, as IAM requires of
    an OIDC provider URL; the STS is told where it is really served."""

    name = f"https://{HOST}"

    @property
    def url(self) -> str:
        return self.name


def _trust(
    *, federated: str = PROVIDER_ARN, sub: str = "role:deploy", actions: list[str] | None = None
) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": federated},
                "Action": actions or ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"],
                "Condition": {"StringEquals": {f"{HOST}:aud": "sts.amazonaws.com", f"{HOST}:sub": sub}},
            }
        ],
    }


@pytest.fixture(scope="module")
def issuer() -> Iterator[NamedIssuer]:
    with NamedIssuer() as named:
        yield named


@pytest.fixture(scope="module")
def sts(issuer) -> Iterator[LocalSTS]:
    with LocalSTS("https://unused.ci-broker.test", served_at={issuer.name: issuer.server.url}) as local:
        yield local


@pytest.fixture(scope="module")
def iam(sts):
    return moto_client("iam", sts.url)


@pytest.fixture(scope="module")
def provider(iam) -> Iterator[str]:
    arn = iam.create_open_id_connect_provider(Url=f"https://{HOST}", ClientIDList=["sts.amazonaws.com"])[
        "OpenIDConnectProviderArn"
    ]
    assert arn == PROVIDER_ARN
    yield arn
    iam.delete_open_id_connect_provider(OpenIDConnectProviderArn=arn)


@pytest.fixture
def role(iam, provider) -> Iterator[Any]:
    """Makes a role with the given trust policy; all are deleted after the test."""
    made: list[str] = []

    def make(policy: dict, max_session: int = 3600, path: str = "/ci/") -> str:
        name = f"sts-test-{uuid.uuid4().hex[:12]}"
        made.append(name)
        return iam.create_role(
            RoleName=name,
            Path=path,
            AssumeRolePolicyDocument=json.dumps(policy),
            MaxSessionDuration=max_session,
        )["Role"]["Arn"]

    yield make
    for name in made:
        iam.delete_role(RoleName=name)


def _token(issuer: LocalIssuer, key: IssuerKeyPair | None = None, **claims: Any) -> str:
    now = int(time.time())
    return issuer.mint(
        {"aud": "sts.amazonaws.com", "sub": "role:deploy", "iat": now, "exp": now + 300, **claims}, key=key
    )


def _assume(sts: LocalSTS, role_arn: str, token: str, duration: int = 900) -> dict[str, Any]:
    return moto_client("sts", sts.url).assume_role_with_web_identity(
        RoleArn=role_arn, RoleSessionName="sts-test", WebIdentityToken=token, DurationSeconds=duration
    )


def _refused(sts: LocalSTS, role_arn: str, token: str, duration: int = 900) -> tuple[str, str]:
    with pytest.raises(ClientError) as refused:
        _assume(sts, role_arn, token, duration)
    error = refused.value.response["Error"]
    return error["Code"], error["Message"]


# -- through the STS, against moto's IAM -----------------------------------------------------------


def test_the_roles_own_subject_with_tags_is_accepted(sts, issuer, role):
    arn = role(_trust())
    answer = _assume(sts, arn, _token(issuer, **{"https://aws.amazon.com/tags": TAGS}))
    assert answer["AssumedRoleUser"]["Arn"].endswith(f"/{arn.rsplit('/', 1)[1]}/sts-test")
    assert sts.accepted[-1]["sub"] == "role:deploy"


def test_an_issuer_without_an_iam_provider_is_refused(sts, role):
    arn = role(_trust())
    with NamedIssuer() as stranger:
        stranger.name = "https://stranger.ci-broker.test"
        sts.served_at[stranger.name] = stranger.server.url
        code, message = _refused(sts, arn, _token(stranger))
    assert code == "InvalidIdentityToken" and "No OpenIDConnect provider" in message


def test_an_audience_the_provider_does_not_list_is_refused(sts, issuer, role):
    arn = role(_trust())
    assert _refused(sts, arn, _token(issuer, aud="https://broker.example.com"))[0] == "InvalidIdentityToken"


def test_a_token_signed_by_another_key_is_refused(sts, issuer, role):
    arn = role(_trust())
    assert _refused(sts, arn, _token(issuer, key=IssuerKeyPair()))[0] == "InvalidIdentityToken"


def test_another_roles_subject_is_refused(sts, issuer, role):
    arn = role(_trust(sub="role:deploy"))
    assert _refused(sts, arn, _token(issuer, sub="role:other"))[0] == "AccessDenied"


def test_a_policy_trusting_another_provider_is_refused(sts, issuer, role):
    arn = role(
        _trust(federated="arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com")
    )
    assert _refused(sts, arn, _token(issuer))[0] == "AccessDenied"


def test_session_tags_need_tag_session(sts, issuer, role):
    arn = role(_trust(actions=["sts:AssumeRoleWithWebIdentity"]))
    _assume(sts, arn, _token(issuer))  # untagged: fine
    code, message = _refused(sts, arn, _token(issuer, **{"https://aws.amazon.com/tags": TAGS}))
    assert code == "AccessDenied" and "sts:TagSession" in message


def test_a_session_longer_than_the_role_allows_is_refused(sts, issuer, role):
    arn = role(_trust(), max_session=3600)
    assert _refused(sts, arn, _token(issuer), duration=7200)[0] == "ValidationError"


def test_a_role_arn_with_another_path_is_refused(sts, issuer, role):
    arn = role(_trust(), path="/ci/")
    assert _refused(sts, arn.replace(":role/ci/", ":role/other/"), _token(issuer))[0] == "AccessDenied"


def test_iam_reads_are_not_recorded_as_sts_calls(sts, issuer, role):
    arn = role(_trust())
    before = len(sts.calls)
    _assume(sts, arn, _token(issuer))
    assert [c["Action"] for c in sts.calls[before:]] == ["AssumeRoleWithWebIdentity"]


# -- the policy evaluator alone --------------------------------------------------------------------


def _allows(policy: dict, action: str = "sts:AssumeRoleWithWebIdentity", context: dict | None = None) -> bool:
    return trust_policy_allows(policy, action=action, federated=PROVIDER_ARN, context=context or CONTEXT)


def test_the_modules_shape_of_policy_is_allowed():
    assert _allows(_trust()) and _allows(_trust(), "sts:TagSession")


def test_an_action_the_policy_does_not_name_is_denied():
    assert not _allows(_trust(actions=["sts:AssumeRoleWithWebIdentity"]), "sts:TagSession")


def test_an_explicit_deny_wins():
    policy = _trust()
    policy["Statement"].append({"Effect": "Deny", "Principal": "*", "Action": "sts:*"})
    assert not _allows(policy)


def test_condition_keys_ignore_case_and_values_do_not():
    upper = {key.upper(): value for key, value in CONTEXT.items()}
    assert _allows(_trust(), context=upper)
    assert not _allows(_trust(sub="ROLE:DEPLOY"))


def test_a_missing_condition_key_fails_string_equals():
    assert not _allows(_trust(), context={f"{HOST}:aud": "sts.amazonaws.com"})


def test_string_like_matches_wildcards_as_iam_does():
    # Why the module never uses it: role:* would admit every broker role's assertion.
    policy = _trust()
    policy["Statement"][0]["Condition"] = {"StringLike": {f"{HOST}:sub": "role:*"}}
    assert _allows(policy, context={**CONTEXT, f"{HOST}:sub": "role:anything"})


@pytest.mark.parametrize(
    "element",
    [
        {"Condition": {"StringEqualsIgnoreCase": {f"{HOST}:sub": "role:deploy"}}},
        {"NotAction": "sts:GetCallerIdentity"},
    ],
    ids=["unknown operator", "NotAction"],
)
def test_an_unimplemented_element_never_allows(element):
    policy = _trust()
    policy["Statement"][0].update(element)
    assert not _allows(policy)


def test_an_unimplemented_element_in_a_deny_denies():
    policy = _trust()
    policy["Statement"].append(
        {"Effect": "Deny", "NotPrincipal": {"AWS": "arn:aws:iam::1:root"}, "Action": "*"}
    )
    assert not _allows(policy)
