"""A local GCP: the STS token exchange and IAM Credentials `generateAccessToken`, with GCP's checks.

The STS endpoint (`POST /v1/token`) takes the RFC 8693 form fields Google documents and behaves
like a workload identity pool with one OIDC provider that trusts the broker's issuer:
- the `audience` field must name this provider's full resource name (else `invalid_target`);
- the subject token must be a JWT from the broker's issuer, signed with a key its JWKS publishes,
  with `aud` equal to that resource name (`FederatedTrust` does what GCP does, fetching the
  broker's discovery document and JWKS);
- the attribute condition admits only the trusted `sub` values (`assertion.sub in [...]`), and
  `google.subject = assertion.sub` makes the principal
  `principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/<sub>`.

`POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken` checks the bearer is a token this
STS issued (with a scope that may call IAM), that the principal holds
roles/iam.workloadIdentityUser on that service account, and the lifetime against the 1-hour limit
(12 hours for accounts the lifetime-extension organization policy lists). `expireTime` is written
like IAM's, whole seconds and `Z`, which google-auth's parser requires.

For `ci-broker revoke --apply`, the IAM API's `POST /v1/projects/-/serviceAccounts/{email}:disable`
and the OAuth token endpoint an operator's service account key names (`POST /token`, the JWT
bearer grant google-auth's service account credentials use): `add_operator` makes a key file
whose signed assertions `/token` verifies against the key's public half before issuing an
access token, and `:disable` accepts only such a token, of an operator allowed to disable, for a
service account this IAM knows. A disabled account's access tokens are rejected (`describe`) and
`generateAccessToken` refuses it, as Google documents for `serviceAccounts.disable`.

Refusals use Google's shapes: OAuth `{"error", "error_description"}` from STS, and
`{"error": {"code", "message", "status", "details"}}` from IAM.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.wrappers import Request, Response

from broker.sandbox.faults import Faults, InFlight
from broker.sandbox.trust import FederatedTrust, TrustRefused
from broker.sandbox.wsgi import LocalServer

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
STS_SCOPES = frozenset({CLOUD_PLATFORM, IAM_SCOPE})
FEDERATED_LIFETIME = 3600
IAM_PREFIX, IAM_SUFFIX = "/v1/projects/", ":generateAccessToken"
DISABLE_SUFFIX = ":disable"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
OPERATOR_LIFETIME = 3600
# The audience Google's token endpoint requires in a service account's assertion, whatever URL the
# key file's token_uri names (google-auth sends it so).
OAUTH_AUDIENCE = "https://oauth2.googleapis.com/token"
EXPIRE_TIME = "%Y-%m-%dT%H:%M:%SZ"
UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)


@dataclass(frozen=True)
class LocalToken:
    kind: str  # "federated" (STS), "service_account" (generateAccessToken), "operator" (/token)
    principal: str  # the federated principal (or the operator's service account) that obtained it
    scopes: tuple[str, ...]
    expires_at: float
    service_account: str | None = None


class LocalGCP:
    def __init__(
        self,
        broker_issuer: str,
        *,
        project_number: str = "123456789012",
        pool: str = "ci-broker",
        provider: str = "broker",
    ) -> None:
        self.project_number = project_number
        self.pool = pool
        self.audience = (
            f"//iam.googleapis.com/projects/{project_number}/locations/global/"
            f"workloadIdentityPools/{pool}/providers/{provider}"
        )
        self.trust = FederatedTrust(issuer=broker_issuer, audience=self.audience)
        self.bindings: dict[str, set[str]] = {}  # service account -> principals with workloadIdentityUser
        self.extended_lifetime: set[str] = set()  # accounts the lifetime-extension policy lists
        self.fractional_expire_time = False  # answer expireTime with fractional seconds (a trap test)
        self.echo_subject_token = False  # refuse with an error that quotes the subject token
        self.echo_bearer = False  # IAM refuses with an error that quotes the bearer token
        self.faults = Faults()
        self.calls: list[dict[str, Any]] = []  # every request: path and non-secret fields
        self.in_flight = InFlight()  # what is being served: see InFlight
        self.subject_tokens: list[str] = []  # every subject token received, for leak tests
        self.issued: list[str] = []  # every access token issued (federated, service account, operator)
        self._tokens: dict[str, LocalToken] = {}
        self.operators: dict[str, tuple[Any, bool]] = {}  # email -> (public key, may disable)
        self.disabled: set[str] = set()  # service accounts disabled through `:disable`
        self.disabled_by: list[tuple[str, str]] = []  # (service account, operator) per disable call
        self._lock = threading.Lock()
        self.server = LocalServer(self._wsgi)

    # -- lifecycle and set-up ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token_url(self) -> str:
        return f"{self.url}/v1/token"

    def start(self) -> LocalGCP:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> LocalGCP:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def principal(self, subject: str) -> str:
        return (
            f"principal://iam.googleapis.com/projects/{self.project_number}/locations/global/"
            f"workloadIdentityPools/{self.pool}/subject/{subject}"
        )

    def trust_role(self, role: str) -> None:
        """Admit `sub == role:<role>` in the provider's attribute condition."""
        self.trust.subjects.add(f"role:{role}")

    def bind(self, service_account: str, role: str) -> None:
        """Grant roles/iam.workloadIdentityUser on `service_account` to the role's principal."""
        self.bindings.setdefault(service_account, set()).add(self.principal(f"role:{role}"))

    def unbind(self, service_account: str, role: str) -> None:
        self.bindings.get(service_account, set()).discard(self.principal(f"role:{role}"))

    def add_operator(self, email: str, *, may_disable: bool = True) -> dict[str, str]:
        """A service account key file (as JSON-ready dict) for an operator of this project, whose
        tokens `:disable` accepts when `may_disable` (roles/iam.serviceAccountAdmin, say)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.operators[email] = (key.public_key(), may_disable)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return {
            "type": "service_account",
            "project_id": email.partition("@")[2].split(".")[0],
            "private_key_id": secrets.token_hex(20),
            "private_key": pem.decode(),
            "client_email": email,
            "client_id": str(secrets.randbelow(10**20)),
            "token_uri": f"{self.url}/token",
        }

    def describe(self, token: str) -> LocalToken | None:
        """What a Google API would know about a bearer token this endpoint issued: nothing once it
        expired, or once its service account is disabled."""
        with self._lock:
            found = self._tokens.get(token)
            if found is None or found.expires_at <= time.time() or found.service_account in self.disabled:
                return None
            return found

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return self.trust.accepted

    # -- HTTP -------------------------------------------------------------------------------------
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self.in_flight.serving():
            return self._serve(environ, start_response)

    def _serve(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        fault = self.faults.take(request.path)
        if fault is not None and fault.status is not None:
            response = _google_error(
                fault.status, _STATUS_NAMES.get(fault.status, "UNAVAILABLE"), "Injected failure."
            )
            if fault.retry_after is not None:
                response.headers["Retry-After"] = str(fault.retry_after)
        elif request.method == "POST" and request.path == "/v1/token":
            response = self._sts(request)
        elif request.method == "POST" and request.path == "/token":
            response = self._operator_token(request)
        elif (
            request.method == "POST"
            and request.path.startswith(IAM_PREFIX)
            and request.path.endswith(DISABLE_SUFFIX)
        ):
            response = self._disable(request)
        elif (
            request.method == "POST"
            and request.path.startswith(IAM_PREFIX)
            and request.path.endswith(IAM_SUFFIX)
        ):
            response = self._generate_access_token(request)
        else:
            response = _google_error(404, "NOT_FOUND", f"The requested URL {request.path} was not found.")
        return response(environ, start_response)

    def _sts(self, request: Request) -> Response:
        if request.mimetype != "application/x-www-form-urlencoded":
            return _oauth_error("invalid_request", "Request must be application/x-www-form-urlencoded.")
        form = {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}
        subject_token = form.pop("subject_token", "")
        self.subject_tokens.append(subject_token)
        self.calls.append({"path": request.path, **form})
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return _oauth_error(
                "unsupported_grant_type", f"Unsupported grant type: {form.get('grant_type')!r}."
            )
        if form.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            return _oauth_error("invalid_request", 'Invalid value for "requested_token_type".')
        if form.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
            return _oauth_error("invalid_request", 'Invalid value for "subject_token_type".')
        if not subject_token:
            return _oauth_error("invalid_request", "The subject token is missing.")
        if self.echo_subject_token:
            return _oauth_error("invalid_grant", f"Unable to verify the ID Token [{subject_token}].")
        if form.get("audience") != self.audience:
            return _oauth_error(
                "invalid_target",
                'The target service indicated by the "audience" parameters is invalid. This '
                "might either be because the pool or provider is disabled or deleted or because "
                "it doesn't exist.",
            )
        scopes = tuple(form.get("scope", "").split())
        if not scopes or not set(scopes) <= STS_SCOPES:
            return _oauth_error("invalid_scope", "The scope is not valid for a federated token.")
        claims = self._check_subject_token(subject_token)
        if isinstance(claims, Response):
            return claims
        token = "ya29.local-federated-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = LocalToken(
                "federated", self.principal(claims["sub"]), scopes, time.time() + FEDERATED_LIFETIME
            )
            self.issued.append(token)
        return _json(
            {
                "access_token": token,
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": FEDERATED_LIFETIME,
            }
        )

    def _check_subject_token(self, subject_token: str) -> dict[str, Any] | Response:
        """The verified claims, or the refusal GCP would give (the unverified pre-checks only pick
        the error; `FederatedTrust.verify` checks everything again, signature first)."""
        try:
            unverified = jwt.decode(subject_token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant", "Unable to parse the ID Token.")
        if unverified.get("iss") != self.trust.issuer:
            return _oauth_error(
                "invalid_grant",
                f"The issuer in ID Token {unverified.get('iss')} does not match the expected ISSUER.",
            )
        if unverified.get("aud") != self.audience:
            return _oauth_error(
                "invalid_grant",
                f"The audience in ID Token [{unverified.get('aud')}] does not match the expected audience.",
            )
        try:
            return self.trust.verify(subject_token)
        except TrustRefused as exc:
            if str(exc).startswith("subject "):
                return _oauth_error(
                    "unauthorized_client", "The given credential is rejected by the attribute condition."
                )
            return _oauth_error("invalid_grant", f"ID Token verification failed: {exc}"[:300])

    def _generate_access_token(self, request: Request) -> Response:
        name = request.path[len(IAM_PREFIX) : -len(IAM_SUFFIX)]
        project, _, service_account = name.partition("/serviceAccounts/")
        bearer = request.headers.get("Authorization", "")
        try:
            body = json.loads(request.get_data(as_text=True) or "{}")
        except ValueError:
            body = None
        self.calls.append(
            {
                "path": request.path,
                "service_account": service_account,
                "body": body if isinstance(body, dict) else None,
            }
        )
        if self.echo_bearer:
            return _google_error(401, "UNAUTHENTICATED", f"Request had invalid credentials: {bearer}")
        if project != "-":
            return _google_error(
                400,
                "INVALID_ARGUMENT",
                "The - wildcard character is required for the project in the resource name.",
            )
        token = self.describe(bearer[len("Bearer ") :]) if bearer.startswith("Bearer ") else None
        if token is None or token.kind != "federated":
            return _google_error(
                401,
                "UNAUTHENTICATED",
                UNAUTHENTICATED,
                reason="ACCESS_TOKEN_TYPE_UNSUPPORTED" if token else None,
            )
        if refused := _without_iam_scope(token.scopes):
            return refused
        if service_account in self.disabled:
            return _google_error(
                403,
                "PERMISSION_DENIED",
                f"Service account {service_account} is disabled.",
                reason="IAM_PERMISSION_DENIED",
            )
        if token.principal not in self.bindings.get(service_account, set()):
            return _google_error(
                403,
                "PERMISSION_DENIED",
                "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
                reason="IAM_PERMISSION_DENIED",
            )
        if not isinstance(body, dict) or body.get("delegates"):
            return _google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        scopes = body.get("scope")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            return _google_error(400, "INVALID_ARGUMENT", "Scope required.")
        lifetime = _duration(body.get("lifetime", "3600s"))
        limit = 43200 if service_account in self.extended_lifetime else 3600
        if lifetime is None or not 1 <= lifetime <= limit:
            return _google_error(
                400,
                "INVALID_ARGUMENT",
                f"The lifetime must be between 1s and {limit}s; longer lifetimes need the "
                "service account listed in constraints/iam.allowServiceAccountCredential"
                "LifetimeExtension.",
            )
        expires = int(time.time()) + lifetime
        access_token = "ya29.local-sa-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[access_token] = LocalToken(
                "service_account", token.principal, tuple(scopes), expires, service_account
            )
            self.issued.append(access_token)
        expire_time = datetime.fromtimestamp(expires, UTC).strftime(EXPIRE_TIME)
        if self.fractional_expire_time:
            expire_time = expire_time[:-1] + ".123456789Z"
        return _json({"accessToken": access_token, "expireTime": expire_time})

    def _operator_token(self, request: Request) -> Response:
        """OAuth 2.0 JWT bearer grant (RFC 7523) for an operator's service account key."""
        form = {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}
        assertion = form.get("assertion", "")
        self.calls.append({"path": request.path, "grant_type": form.get("grant_type")})
        if form.get("grant_type") != JWT_BEARER or not assertion:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type.")
        try:
            issuer = str(jwt.decode(assertion, options={"verify_signature": False}).get("iss"))
            public_key, _ = self.operators[issuer]
            claims = jwt.decode(
                assertion,
                public_key,
                algorithms=["RS256"],
                audience=OAUTH_AUDIENCE,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except (jwt.PyJWTError, KeyError, TypeError):
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        if claims["exp"] - claims["iat"] > OPERATOR_LIFETIME:
            return _oauth_error(
                "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes)."
            )
        scopes = tuple(str(claims.get("scope", "")).split())
        if not scopes:
            return _oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token = "ya29.local-operator-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = LocalToken(
                "operator", f"serviceAccount:{issuer}", scopes, time.time() + OPERATOR_LIFETIME
            )
            self.issued.append(token)
        return _json({"access_token": token, "expires_in": OPERATOR_LIFETIME, "token_type": "Bearer"})

    def _disable(self, request: Request) -> Response:
        """IAM's serviceAccounts.disable: an operator's token with permission on a known account."""
        name = request.path[len(IAM_PREFIX) : -len(DISABLE_SUFFIX)]
        project, _, service_account = name.partition("/serviceAccounts/")
        bearer = request.headers.get("Authorization", "")
        token = self.describe(bearer[len("Bearer ") :]) if bearer.startswith("Bearer ") else None
        self.calls.append({"path": request.path, "service_account": service_account})
        if self.echo_bearer:
            return _google_error(401, "UNAUTHENTICATED", f"Request had invalid credentials: {bearer}")
        if token is None or token.kind != "operator":
            return _google_error(401, "UNAUTHENTICATED", UNAUTHENTICATED)
        if refused := _without_iam_scope(token.scopes):
            return refused
        operator = token.principal.removeprefix("serviceAccount:")
        if not self.operators.get(operator, (None, False))[1] or service_account not in self.bindings:
            return _google_error(
                403,
                "PERMISSION_DENIED",
                "Permission 'iam.serviceAccounts.disable' denied on resource (or it may not exist).",
                reason="IAM_PERMISSION_DENIED",
            )
        if project == "":
            return _google_error(400, "INVALID_ARGUMENT", "Invalid resource name.")
        with self._lock:
            self.disabled.add(service_account)
            self.disabled_by.append((service_account, operator))
        return _json({})


_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def _duration(value: Any) -> int | None:
    """A google.protobuf.Duration in JSON ("3600s") as whole seconds."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    try:
        return int(float(value[:-1]))
    except ValueError:
        return None


def _json(doc: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(doc), status=status, mimetype="application/json")


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    return _json({"error": error, "error_description": description}, status)


def _google_error(code: int, status: str, message: str, *, reason: str | None = None) -> Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "iam.googleapis.com",
            }
        ]
    return _json({"error": error}, code)


def _without_iam_scope(scopes: Iterable[str]) -> Response | None:
    """IAM's 403 for an access token whose scopes reach neither IAM nor all of Cloud Platform."""
    if {IAM_SCOPE, CLOUD_PLATFORM} & set(scopes):
        return None
    return _google_error(
        403,
        "PERMISSION_DENIED",
        "Request had insufficient authentication scopes.",
        reason="ACCESS_TOKEN_SCOPE_INSUFFICIENT",
    )
