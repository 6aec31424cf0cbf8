"""GCP: an access token for a granted role, through google-auth's workload identity federation.

The broker's assertion (aud = the role's workload identity provider, sub = `role:<name>`) is the
subject token of an RFC 8693 exchange at Google's STS. With a `service_account`, the federated
token is then traded at IAM Credentials `generateAccessToken` for that account's token, with the
role's scopes and lifetime; without one, the federated token itself is returned (direct resource
access, where IAM bindings name `principal://.../subject/role:<name>`). The broker holds no
Google key: the pool's provider trusts the broker's issuer.

With `federated_token: true` the answer also carries a fresh broker assertion for the role and
the STS and impersonation URLs, for clients whose Google libraries exchange it themselves (an
`external_account` credential configuration, contract section 8). Like Azure's, it is a
credential in its own right (valid for at most five minutes), which is why it is off by default.

google-auth does the protocol; two of its conveniences are avoided on purpose:
- `google.auth.load_credentials_from_dict(info, scopes=...)` looks up a project id while loading,
  which refreshes the credentials (a whole token exchange) and then calls Cloud Resource Manager
  on the public internet, even when `token_url` points at a private endpoint. Credentials are
  built directly from `identity_pool.Credentials` instead.
- `google.auth.transport.requests.Request` logs each request's body and headers at DEBUG, and the
  STS body carries the subject token (the broker's assertion) unredacted. `_Transport` sends the
  same requests without logging them, with the broker's timeouts and bounded retries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.clouds import Assertions, Grant, Issued
from broker.clouds._http import DEFAULT_POLICY, HttpPolicy, refusal, requests_session, verify_setting
from broker.errors import UpstreamError
from broker.schema import Section

DEFAULT_TOKEN_URL = "https://sts.googleapis.com/v1/token"
DEFAULT_IAM_CREDENTIALS_URL = "https://iamcredentials.googleapis.com"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
# generateAccessToken allows 1 hour, or 12 hours for service accounts that the organization
# policy constraints/iam.allowServiceAccountCredentialLifetimeExtension lists.
MAX_LIFETIME, MAX_EXTENDED_LIFETIME = 3600, 43200
# Google's STS sets the federated token's lifetime itself; it cannot be asked for less.
STS_LIFETIME = 3600

AUDIENCE = re.compile(
    r"//iam\.googleapis\.com/projects/\d{1,20}/locations/global/"
    r"workloadIdentityPools/[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32}"
)
SERVICE_ACCOUNT = re.compile(r"[a-z0-9][a-z0-9-]{0,98}@[a-z0-9][a-z0-9.-]{0,98}\.gserviceaccount\.com")
SCOPE = re.compile(r"https://www\.googleapis\.com/auth/[A-Za-z0-9._/-]+|openid|email|profile")

HTTP_POLICY: HttpPolicy = DEFAULT_POLICY  # module-level so tests can shorten timeouts


@dataclass(frozen=True)
class GcpSettings:
    audience: str
    service_account: str | None
    scopes: tuple[str, ...]
    lifetime: int  # with a service account, the generateAccessToken lifetime; else a cap on requests
    extended_lifetime: bool
    token_url: str
    iam_credentials_url: str
    ca_bundle: str | None
    federated_token: bool = False

    @property
    def impersonation_url(self) -> str | None:
        if not self.service_account:
            return None
        return f"{self.iam_credentials_url}/v1/projects/-/serviceAccounts/{self.service_account}:generateAccessToken"


class GcpKind:
    def parse_settings(self, s: Section) -> GcpSettings | None:
        audience = s.string(
            "audience",
            required=True,
            pattern=AUDIENCE,
            hint="expected the provider's full resource name, //iam.googleapis.com/projects/"
            "<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>",
        )
        service_account = s.string(
            "service_account",
            pattern=SERVICE_ACCOUNT,
            hint="expected a service account email, NAME@PROJECT.iam.gserviceaccount.com",
        )
        scopes = s.string_list("scopes", (CLOUD_PLATFORM,))
        for i, scope in enumerate(scopes):
            if not SCOPE.fullmatch(scope):
                s.findings.error(
                    f"{s.at('scopes')}[{i}]", f"{scope!r} is not an OAuth scope such as {CLOUD_PLATFORM}"
                )
        extended = s.boolean("extended_lifetime", False)
        lifetime = s.integer("lifetime", None, minimum=1, maximum=MAX_EXTENDED_LIFETIME)
        token_url = s.url("token_url", DEFAULT_TOKEN_URL)
        iam_url = s.url("iam_credentials_url", DEFAULT_IAM_CREDENTIALS_URL)
        ca_bundle = s.string("ca_bundle")
        federated_token = s.boolean("federated_token", False)
        s.finish()

        if iam_url and urlsplit(iam_url).path not in ("", "/"):
            s.findings.error(
                s.at("iam_credentials_url"),
                "is the service's base URL, without a path (the broker adds /v1/projects/-/...)",
            )
            iam_url = None
        if ca_bundle and not Path(ca_bundle).is_file():
            s.findings.error(s.at("ca_bundle"), f"{ca_bundle!r} is not a readable file")
            ca_bundle = None
        if service_account:
            if lifetime is None and "lifetime" not in s:
                lifetime = MAX_LIFETIME
            if lifetime is not None and lifetime > MAX_LIFETIME and not extended:
                s.findings.error(
                    s.at("lifetime"),
                    f"must be at most {MAX_LIFETIME} unless extended_lifetime is true (the "
                    "organization policy constraints/iam.allowServiceAccountCredentialLifetime"
                    "Extension must list the service account)",
                )
                lifetime = None
        else:
            if extended:
                s.findings.error(s.at("extended_lifetime"), "applies only with service_account")
            if lifetime is not None and lifetime > STS_LIFETIME:
                s.findings.error(
                    s.at("lifetime"),
                    f"must be at most {STS_LIFETIME} without service_account: Google's STS "
                    "issues federated tokens for one hour",
                )
                lifetime = None
            elif lifetime is not None and lifetime < STS_LIFETIME:
                s.findings.warning(
                    s.at("lifetime"),
                    "without service_account Google's STS sets the token's lifetime (one "
                    "hour); lifetime only caps the duration callers may request",
                )
            elif lifetime is None and "lifetime" not in s:
                lifetime = STS_LIFETIME
            if "iam_credentials_url" in s:
                s.findings.warning(s.at("iam_credentials_url"), "has no effect without service_account")
        if not audience or lifetime is None or not scopes or token_url is None or iam_url is None:
            return None
        return GcpSettings(
            audience=audience,
            service_account=service_account,
            scopes=scopes,
            lifetime=lifetime,
            extended_lifetime=extended,
            token_url=token_url,
            iam_credentials_url=iam_url.rstrip("/"),
            ca_bundle=ca_bundle,
            federated_token=federated_token,
        )

    def max_duration(self, settings: GcpSettings) -> int:
        return settings.lifetime

    def min_duration(self, settings: GcpSettings) -> int:
        return 1

    def build_backend(self, role: str, settings: GcpSettings, shared: dict[Any, Any]) -> GcpBackend:
        return GcpBackend(role, settings, shared)


KIND = GcpKind()


class _Response:
    """google-auth's `transport.Response` interface."""

    def __init__(self, status: int, headers: Any, data: bytes) -> None:
        self.status = status
        self.headers = headers
        self.data = data


class _Transport:
    """google-auth's `transport.Request` interface over the shared pooled session.

    One per exchange: it remembers which endpoint answered last and how, so a refusal can be
    reported with the step and the upstream's own error code.
    """

    def __init__(self, session: Any, policy: HttpPolicy, verify: str | bool) -> None:
        self.session = session
        self.timeout = (policy.connect_timeout, policy.read_timeout)
        self.verify = verify
        self.last_url: str | None = None
        self.last_status: int | None = None
        self.last_body: bytes = b""
        # Bearer tokens sent (the federated STS token, on the IAM step): never to be echoed back.
        self.bearers: list[str] = []

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> _Response:
        import requests
        from google.auth.exceptions import TransportError

        self.last_url, self.last_status, self.last_body = url, None, b""
        authorization = (headers or {}).get("authorization") or (headers or {}).get("Authorization")
        if isinstance(authorization, str) and authorization.startswith("Bearer "):
            self.bearers.append(authorization[len("Bearer ") :])
        try:
            response = self.session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=self.timeout,
                verify=self.verify,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise TransportError(type(exc).__name__) from exc
        self.last_status, self.last_body = response.status_code, response.content
        return _Response(response.status_code, response.headers, response.content)


class GcpBackend:
    def __init__(self, role: str, settings: GcpSettings, shared: dict[Any, Any]) -> None:
        # Imported here, at start-up, so `ci-broker check` never loads the SDK.
        from google.auth import identity_pool

        self.role = role
        self.settings = settings
        self.identity_pool = identity_pool
        self.policy = HTTP_POLICY
        self.verify = verify_setting(settings.ca_bundle)
        key = ("gcp-http", self.policy)
        if key not in shared:
            shared[key] = requests_session(self.policy)
        self.session = shared[key]

    def issue(self, grant: Grant) -> Issued:
        from google.auth import exceptions

        s = self.settings
        supplier = Assertions(grant, s.audience)
        transport = _Transport(self.session, self.policy, self.verify)
        # One Credentials object per exchange: it caches the token it fetched, and a token minted
        # for one grant (its assertion names that job's run) must never be handed to another. It
        # is plain Python to build; the pooled session it uses is shared.
        credentials = self._credentials(supplier, grant)
        try:
            credentials.refresh(transport)
            token = credentials.token
            expiry = credentials.expiry
            if not isinstance(token, str) or not token or not isinstance(expiry, datetime):
                raise ValueError("no token or expiry in the response")
        except exceptions.TransportError as exc:
            step = self._step(transport)
            raise UpstreamError(f"GCP {step} could not be reached", reason=f"gcp {step}: {exc}") from None
        except (exceptions.GoogleAuthError, ValueError, KeyError, TypeError) as exc:
            raise self._refusal(transport, supplier, exc) from None
        credentials_out = {"access_token": token, "token_type": "Bearer"}
        if s.service_account:
            credentials_out["service_account"] = s.service_account
        if s.federated_token:
            credentials_out.update(self._external_account(grant))
        # google-auth keeps expiry as a naive UTC datetime.
        return Issued(expires_at=expiry.replace(tzinfo=UTC), credentials=credentials_out)

    def _credentials(self, supplier: Assertions, grant: Grant) -> Any:
        s = self.settings
        options = None
        if s.service_account:
            options = {"token_lifetime_seconds": min(grant.duration or s.lifetime, s.lifetime)}
        return self.identity_pool.Credentials(
            audience=s.audience,
            subject_token_type=JWT_TOKEN_TYPE,
            token_url=s.token_url,
            subject_token_supplier=supplier,
            service_account_impersonation_url=s.impersonation_url,
            service_account_impersonation_options=options,
            scopes=list(s.scopes),
        )

    def _external_account(self, grant: Grant) -> dict[str, str]:
        """With `federated_token: true`: a fresh broker assertion for the role, and what a client
        needs to write an `external_account` credential configuration around it, so Google's own
        libraries do the STS exchange (and impersonation) themselves."""
        s = self.settings
        out = {
            "federated_token": grant.mint_assertion(s.audience, {}),
            "audience": s.audience,
            "token_url": s.token_url,
        }
        if s.impersonation_url:
            out["service_account_impersonation_url"] = s.impersonation_url
        return out

    def _step(self, transport: _Transport) -> str:
        if transport.last_url is None or transport.last_url == self.settings.token_url:
            return "STS"
        return "IAM Credentials"

    def _refusal(self, transport: _Transport, supplier: Assertions, exc: Exception) -> UpstreamError:
        step = self._step(transport)
        status = transport.last_status
        parsed = google_error(transport.last_body)
        if parsed is None:
            # Not an error document (e.g. a 200 google-auth could not parse): its body may hold a
            # token, so none of it is repeated.
            return UpstreamError(
                f"GCP {step} returned an unexpected response (HTTP {status})",
                reason=f"gcp {step} HTTP {status}: {type(exc).__name__}",
            )
        code, description = parsed
        return refusal(
            f"GCP {step}", f"gcp {step} HTTP {status}", code, description, supplier.minted + transport.bearers
        )


def google_error(body: bytes) -> tuple[str, str] | None:
    """(code, description) from STS's OAuth error or IAM's google.rpc error document, else None."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    error = doc.get("error")
    if isinstance(error, str):  # OAuth 2.0 (STS): {"error": "invalid_grant", "error_description": "..."}
        return error, str(doc.get("error_description", ""))
    if isinstance(error, dict):  # Google APIs: {"error": {"code": 403, "message": "...", "status": "..."}}
        code = error.get("status") or error.get("code") or "UNKNOWN"
        return str(code), str(error.get("message", ""))
    return None
