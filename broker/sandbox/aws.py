"""A local AWS STS: moto's server behind the trust check AWS itself would apply.

moto verifies nothing (it accepts garbage tokens and unknown roles), so AssumeRoleWithWebIdentity
calls are first checked here, in one of two ways:

* a role registered with `trust_role(arn, broker_role)` stands for an IAM OIDC provider for the
  broker's issuer and a trust policy with `aud == sts.amazonaws.com` and `sub == role:<name>`;
* any other role is looked up in moto's IAM (which this same endpoint serves, so terraform can
  create it): the token must come from an issuer registered there as an OIDC provider, with an
  audience in its client id list and a valid signature, and the role's own trust policy document
  must allow `sts:AssumeRoleWithWebIdentity` (and `sts:TagSession` when the token carries session
  tags) for that provider, with its conditions evaluated as IAM does (`trust_policy_allows`).

Refusals come back in STS's own XML error shape, so boto3 raises the same ClientError it would
against AWS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import boto3
import jwt
from botocore.config import Config
from botocore.exceptions import ClientError
from werkzeug.wrappers import Request, Response

from broker.sandbox.trust import FederatedTrust, TrustRefused
from broker.sandbox.wsgi import LocalServer

# STS's documented constraint on RoleSessionName: ASCII word characters and +=,.@-, 2 to 64 long.
ROLE_SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
ERROR_XML = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>
  <RequestId>00000000-0000-0000-0000-000000000000</RequestId>
</ErrorResponse>"""

WEB_IDENTITY_ACTION = "sts:AssumeRoleWithWebIdentity"
TAG_SESSION_ACTION = "sts:TagSession"
SESSION_TAGS_CLAIM = "https://aws.amazon.com/tags"
NOT_AUTHORIZED = "Not authorized to perform {action}"


class LocalSTS:
    def __init__(
        self,
        broker_issuer: str,
        roles: dict[str, str] | None = None,
        *,
        served_at: Mapping[str, str] | None = None,
    ) -> None:
        """`roles` maps a role ARN to the broker role name its trust policy names in `sub`.
        `served_at` maps an issuer URL registered in IAM to the local base URL that serves its
        discovery document and JWKS, for issuers (https, no port) no test can serve at their name."""
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.moto = DomainDispatcherApplication(create_backend_app)
        self.roles = dict(roles or {})
        self.served_at = dict(served_at or {})
        self._iam: Any = None
        self.trust = FederatedTrust(issuer=broker_issuer, audience="sts.amazonaws.com", max_lifetime=86400)
        self.calls: list[dict[str, str]] = []  # every STS action seen, with its form parameters
        self.echo_assertion = False  # answer like a careless upstream that quotes what it got
        self.server = LocalServer(self._wsgi)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> LocalSTS:
        self.server.start()
        # Reads the roles and OIDC providers in moto's IAM through this same endpoint; built once,
        # off the request path. moto accepts any key.
        self._iam = boto3.client(
            "iam",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="local-sts",
            aws_secret_access_key="local-sts",
            config=Config(retries={"max_attempts": 1}),
        )
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> LocalSTS:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        body = request.get_data(cache=True)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if _signing_service(environ) in (None, "sts"):  # IAM reads (ours, terraform's) are not STS calls
            self.calls.append(form)
        if form.get("Action") == "AssumeRoleWithWebIdentity":
            problem = self._check_web_identity(form)
            if problem is not None:
                code, message = problem
                response = Response(
                    ERROR_XML.format(code=code, message=message), status=400, mimetype="text/xml"
                )
                return response(environ, start_response)
        # moto reads the body again from the stream we consumed.
        from io import BytesIO

        environ["wsgi.input"] = BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.moto(environ, start_response)

    def _check_web_identity(self, form: dict[str, str]) -> tuple[str, str] | None:
        if self.echo_assertion:
            return "InvalidIdentityToken", f"Couldn't verify token {form.get('WebIdentityToken', '')}"
        if not ROLE_SESSION_NAME.fullmatch(form.get("RoleSessionName", "")):
            return "ValidationError", (
                "1 validation error detected: Value at 'roleSessionName' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: [\\w+=,.@-]*"
            )
        role_arn = form.get("RoleArn", "")
        if role_arn not in self.roles:
            return self._check_iam_trust_policy(form, role_arn)
        try:
            claims = self.trust.verify(form.get("WebIdentityToken", ""))
        except TrustRefused as exc:
            return "InvalidIdentityToken", _xml_escape(str(exc))
        if claims["sub"] != f"role:{self.roles[role_arn]}":
            return "AccessDenied", NOT_AUTHORIZED.format(action=WEB_IDENTITY_ACTION)
        tags = claims.get(SESSION_TAGS_CLAIM)
        if tags is not None and not _valid_tags_claim(tags):
            return "InvalidIdentityToken", "malformed session tags claim"
        return None

    def _check_iam_trust_policy(self, form: dict[str, str], role_arn: str) -> tuple[str, str] | None:
        """What STS does for a role in IAM: the role's own trust policy decides."""
        role = self._iam_role(role_arn)
        if role is None:
            return "AccessDenied", NOT_AUTHORIZED.format(action=WEB_IDENTITY_ACTION)
        try:
            provider_arn, claims = self._verify_for_registered_provider(form.get("WebIdentityToken", ""))
        except TrustRefused as exc:
            return "InvalidIdentityToken", _xml_escape(str(exc))
        tags = claims.get(SESSION_TAGS_CLAIM)
        if tags is not None and not _valid_tags_claim(tags):
            return "InvalidIdentityToken", "malformed session tags claim"
        # IAM names the condition keys after the provider's URL: broker.example.com:sub.
        provider_url = provider_arn.split(":oidc-provider/", 1)[1]
        context = {f"{provider_url}:aud": claims["aud"], f"{provider_url}:sub": claims["sub"]}
        actions = [WEB_IDENTITY_ACTION] + ([TAG_SESSION_ACTION] if tags is not None else [])
        for action in actions:
            allowed = trust_policy_allows(
                role["AssumeRolePolicyDocument"], action=action, federated=provider_arn, context=context
            )
            if not allowed:
                return "AccessDenied", NOT_AUTHORIZED.format(action=action)
        duration = form.get("DurationSeconds", "3600")
        if not duration.isdigit() or int(duration) < 900:
            return "ValidationError", "DurationSeconds must be a whole number of seconds, at least 900."
        if int(duration) > role["MaxSessionDuration"]:
            return (
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            )
        self.trust.record(claims)
        return None

    def _iam_role(self, role_arn: str) -> dict[str, Any] | None:
        if self._iam is None or ":role/" not in role_arn:
            return None
        try:
            role: dict[str, Any] = self._iam.get_role(RoleName=role_arn.rsplit("/", 1)[1])["Role"]
        except ClientError:
            return None
        return role if role["Arn"] == role_arn else None

    def _verify_for_registered_provider(self, token: str) -> tuple[str, dict[str, Any]]:
        """The token's verified claims, and the ARN of the IAM OIDC provider of its issuer."""
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise TrustRefused(f"{type(exc).__name__}: {exc}") from None
        issuer, audience = unverified.get("iss"), unverified.get("aud")
        if not isinstance(issuer, str) or not issuer.startswith("https://"):
            raise TrustRefused("the token's issuer is not an https URL")
        provider = self._oidc_provider(issuer.removeprefix("https://"))
        if provider is None:
            raise TrustRefused(f"No OpenIDConnect provider found in your account for {issuer}")
        provider_arn, client_ids = provider
        if not isinstance(audience, str) or audience not in client_ids:
            raise TrustRefused("Incorrect token audience")
        trust = FederatedTrust(
            issuer=issuer, audience=audience, max_lifetime=86400, fetch_from=self.served_at.get(issuer)
        )
        return provider_arn, trust.verify_signed(token)

    def _oidc_provider(self, url: str) -> tuple[str, list[str]] | None:
        """(ARN, client ids) of the IAM OIDC provider for `url` (host and path, no scheme)."""
        for entry in self._iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]:
            provider = self._iam.get_open_id_connect_provider(OpenIDConnectProviderArn=entry["Arn"])
            if provider["Url"] == url:
                return entry["Arn"], list(provider.get("ClientIDList", []))
        return None

    def trust_role(self, role_arn: str, broker_role: str) -> None:
        self.roles[role_arn] = broker_role
        self.trust.subjects.add(f"role:{broker_role}")

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return self.trust.accepted


def _valid_tags_claim(tags: Any) -> bool:
    """AWS's documented shape: principal_tags maps each key to a one-element list of strings."""
    if not isinstance(tags, dict) or set(tags) - {"principal_tags", "transitive_tag_keys"}:
        return False
    principal = tags.get("principal_tags", {})
    return (
        isinstance(principal, dict)
        and len(principal) <= 50
        and all(
            isinstance(k, str) and isinstance(v, list) and len(v) == 1 and isinstance(v[0], str)
            for k, v in principal.items()
        )
    )


class UnsupportedPolicy(Exception):
    """A policy element this evaluator does not implement; never read as a grant."""


def trust_policy_allows(
    document: Mapping[str, Any] | str, *, action: str, federated: str, context: Mapping[str, str]
) -> bool:
    """IAM's verdict on a role trust policy for a web identity request: an explicit Deny wins, then
    any Allow, else the implicit deny. `federated` is the OIDC provider ARN the token came through,
    `context` its condition keys (`host:aud`, `host:sub`). A statement using an element this does
    not implement (NotPrincipal, NotAction, another condition operator) never allows, and denies if
    it is a Deny: it fails closed."""
    policy: Mapping[str, Any] = json.loads(document) if isinstance(document, str) else document
    statements = policy.get("Statement", [])
    keys = {key.lower(): value for key, value in context.items()}
    allowed = False
    for statement in statements if isinstance(statements, list) else [statements]:
        effect = statement.get("Effect")
        try:
            applies = _statement_applies(statement, action, federated, keys)
        except UnsupportedPolicy:
            applies = effect == "Deny"
        if effect == "Deny" and applies:
            return False
        allowed = allowed or (effect == "Allow" and applies)
    return allowed


def _statement_applies(
    statement: Mapping[str, Any], action: str, federated: str, keys: Mapping[str, str]
) -> bool:
    if "NotPrincipal" in statement or "NotAction" in statement:
        raise UnsupportedPolicy("NotPrincipal / NotAction")
    principal = statement.get("Principal")
    if principal != "*" and (
        not isinstance(principal, dict) or federated not in _as_list(principal.get("Federated", []))
    ):
        return False
    if not any(
        _wildcard(pattern, ignore_case=True).fullmatch(action)
        for pattern in _as_list(statement.get("Action"))
    ):
        return False
    for operator, tests in statement.get("Condition", {}).items():
        check = CONDITION_OPERATORS.get(operator)
        if check is None:
            raise UnsupportedPolicy(operator)
        for key, expected in tests.items():
            if not check(keys.get(key.lower()), [str(v) for v in _as_list(expected)]):
                return False
    return True


# IAM's string operators on a single-valued key; a missing key fails the positive ones and
# satisfies the negated ones.
CONDITION_OPERATORS = {
    "StringEquals": lambda actual, values: actual is not None and actual in values,
    "StringNotEquals": lambda actual, values: actual is None or actual not in values,
    "StringLike": lambda actual, values: (
        actual is not None and any(_wildcard(v).fullmatch(actual) for v in values)
    ),
    "StringNotLike": lambda actual, values: (
        actual is None or not any(_wildcard(v).fullmatch(actual) for v in values)
    ),
}


def _wildcard(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """IAM's `*` and `?` wildcards; everything else literal."""
    body = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _signing_service(environ: Mapping[str, Any]) -> str | None:
    """The service a SigV4-signed request was signed for (`iam`, `sts`); None when unsigned."""
    match = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
    return match.group(1) if match else None


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")[:300]
