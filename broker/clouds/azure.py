"""Azure: a Microsoft Entra ID access token for a granted role, through azure-identity.

`ClientAssertionCredential` authenticates the role's application (or user-assigned managed
identity) with the broker's assertion as its client assertion: aud `api://AzureADTokenExchange`,
sub `role:<name>`, matched by one federated identity credential per role. The broker holds no
client secret or certificate.

This credential posts straight to `{authority_host}/{tenant}/oauth2/v2.0/token`; unlike the
MSAL-based credentials it does no instance discovery and fetches no OpenID metadata, so an
exchange is one request (plus bounded retries) and `disable_instance_discovery` does not apply.

With `federated_token: true` the answer also carries a fresh broker assertion for the same role,
for clients that must sign in themselves (`az login --federated-token`, azure-identity's
`WorkloadIdentityCredential`, Terraform azurerm with OIDC). It is a credential in its own right
(valid for at most five minutes), which is why it is off unless the role asks for it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.clouds import Assertions, Grant, Issued
from broker.clouds._http import DEFAULT_POLICY, POOL_SIZE, HttpPolicy, refusal, verify_setting
from broker.errors import UpstreamError
from broker.schema import Section

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_ASSERTION_AUDIENCE = "api://AzureADTokenExchange"
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
TENANT = re.compile(GUID.pattern + r"|(?=.{4,253}$)([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}")
# Client credentials take a resource's `.default` scope; the characters are azure-identity's.
SCOPE = re.compile(r"[A-Za-z0-9._:/-]+/\.default")
ASSERTION_AUDIENCE = re.compile(r"[\x21-\x7e]{1,256}")

HTTP_POLICY: HttpPolicy = DEFAULT_POLICY  # module-level so tests can shorten timeouts
COMPACT_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# azure-identity logs a failed get_token here: Entra's error text at WARNING, its traceback at DEBUG.
GET_TOKEN_LOGGER = "azure.identity._internal.get_token_mixin"


@dataclass(frozen=True)
class AzureSettings:
    tenant_id: str
    client_id: str
    scope: str
    subscription_id: str | None
    authority_host: str
    assertion_audience: str
    federated_token: bool
    ca_bundle: str | None


class AzureKind:
    def parse_settings(self, s: Section) -> AzureSettings | None:
        tenant_id = s.string("tenant_id", required=True)
        if tenant_id and tenant_id.lower() in ("common", "organizations", "consumers"):
            s.findings.error(
                s.at("tenant_id"),
                "must name one tenant: client credentials cannot use a multi-tenant authority",
            )
            tenant_id = None
        elif tenant_id and not TENANT.fullmatch(tenant_id):
            s.findings.error(
                s.at("tenant_id"),
                f"{tenant_id!r} is not valid: expected the directory "
                "(tenant) id, a GUID, or a verified domain",
            )
            tenant_id = None
        client_id = s.string(
            "client_id", required=True, pattern=GUID, hint="expected the application (client) id, a GUID"
        )
        scope = s.string(
            "scope",
            required=True,
            pattern=SCOPE,
            hint="expected a resource's .default scope, such as https://management.azure.com/.default",
        )
        subscription_id = s.string("subscription_id", pattern=GUID, hint="expected a subscription id, a GUID")
        authority = s.url("authority_host", DEFAULT_AUTHORITY_HOST)
        audience = s.string(
            "assertion_audience",
            DEFAULT_ASSERTION_AUDIENCE,
            pattern=ASSERTION_AUDIENCE,
            hint="expected the audience the federated identity credential lists",
        )
        federated_token = s.boolean("federated_token", False)
        ca_bundle = s.string("ca_bundle")
        s.finish()

        if authority is not None:
            parts = urlsplit(authority)
            if parts.scheme != "https":
                # schema.url admits http for loopback; azure-identity refuses it everywhere.
                s.findings.error(
                    s.at("authority_host"),
                    "must use https:// (azure-identity refuses any other scheme, even for "
                    "loopback; serve a local endpoint with TLS and set ca_bundle)",
                )
                authority = None
            elif parts.path not in ("", "/"):
                s.findings.error(
                    s.at("authority_host"),
                    "is the host only, such as https://login.microsoftonline.us (the tenant "
                    "comes from tenant_id)",
                )
                authority = None
        if ca_bundle and not Path(ca_bundle).is_file():
            s.findings.error(s.at("ca_bundle"), f"{ca_bundle!r} is not a readable file")
            ca_bundle = None
        if not tenant_id or not client_id or not scope or not authority or not audience:
            return None
        return AzureSettings(
            tenant_id=tenant_id,
            client_id=client_id,
            scope=scope,
            subscription_id=subscription_id,
            authority_host=authority.rstrip("/"),
            assertion_audience=audience,
            federated_token=federated_token,
            ca_bundle=ca_bundle,
        )

    def max_duration(self, settings: AzureSettings) -> None:
        # Entra ID chooses an access token's lifetime (60 to 90 minutes); a client cannot ask.
        return None

    def min_duration(self, settings: AzureSettings) -> int:
        return 1

    def build_backend(self, role: str, settings: AzureSettings, shared: dict[Any, Any]) -> AzureBackend:
        return AzureBackend(role, settings, shared)


KIND = AzureKind()


class RedactJwts(logging.Filter):
    """Replaces compact JWTs in a logger's records and drops their tracebacks.

    azure-identity repeats Entra's error description when get_token fails. Entra does not usually
    quote the client assertion there, but an assertion must never reach a log on the strength of
    "usually"; the broker's own message about the failure is in the audit event anyway.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot be formatted is dropped, not risked
            return False
        if COMPACT_JWT.search(text) or record.exc_info or record.exc_text:
            record.msg, record.args = COMPACT_JWT.sub("[redacted JWT]", text), None
            record.exc_info, record.exc_text = None, None
        return True


def install_log_redaction() -> None:
    logger = logging.getLogger(GET_TOKEN_LOGGER)
    if not any(isinstance(f, RedactJwts) for f in logger.filters):
        logger.addFilter(RedactJwts())


@functools.cache
def _retry_policy_class(max_retry_after: float) -> type:
    """azure-core's RetryPolicy, but a Retry-After longer than `max_retry_after` is cut short."""
    from azure.core.pipeline.policies import RetryPolicy
    from azure.core.rest import HttpRequest, HttpResponse

    class CappedRetryPolicy(RetryPolicy[HttpRequest, HttpResponse]):
        def get_retry_after(self, response: Any) -> float | None:
            value = super().get_retry_after(response)
            return None if value is None else min(value, max_retry_after)

    return CappedRetryPolicy


class AzureBackend:
    def __init__(self, role: str, settings: AzureSettings, shared: dict[Any, Any]) -> None:
        # Imported here, at start-up, so `ci-broker check` never loads the SDK.
        from azure.identity import ClientAssertionCredential

        install_log_redaction()
        self.role = role
        self.settings = settings
        self.credential_class = ClientAssertionCredential
        policy = HTTP_POLICY
        self.pipeline_options: dict[str, Any] = {
            "transport": _transport(policy, settings.ca_bundle, shared),
            "retry_policy_class": _retry_policy_class(policy.max_retry_after),
            "retry_total": policy.retries,
            "retry_connect": policy.retries,
            "retry_read": policy.retries,
            "retry_status": policy.retries,
            "retry_backoff_factor": policy.backoff,
            "retry_backoff_max": policy.max_backoff,
            "timeout": (policy.connect_timeout + policy.read_timeout + policy.max_retry_after)
            * (policy.retries + 1),
        }

    def issue(self, grant: Grant) -> Issued:
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        s = self.settings
        assertions = Assertions(grant, s.assertion_audience)
        # One credential per exchange: it caches the token it fetched and would hand a token
        # obtained with one job's assertion to the next job. Building it is plain Python; the
        # transport (HTTP session and connection pool) is shared by every role.
        credential = self.credential_class(
            s.tenant_id, s.client_id, assertions, authority=s.authority_host, **self.pipeline_options
        )
        try:
            token = credential.get_token(s.scope)
        except ClientAuthenticationError as exc:
            raise _refusal(exc, assertions.minted) from None
        except AzureError as exc:
            raise UpstreamError(
                "Microsoft Entra ID could not be reached", reason=f"entra {type(exc).__name__}"
            ) from None
        credentials = {
            "access_token": token.token,
            "token_type": "Bearer",
            "tenant_id": s.tenant_id,
            "client_id": s.client_id,
        }
        if s.subscription_id:
            credentials["subscription_id"] = s.subscription_id
        if s.federated_token:
            credentials["federated_token"] = grant.mint_assertion(s.assertion_audience, {})
            credentials["authority_host"] = s.authority_host
        return Issued(expires_at=datetime.fromtimestamp(token.expires_on, UTC), credentials=credentials)


def _transport(policy: HttpPolicy, ca_bundle: str | None, shared: dict[Any, Any]) -> Any:
    """One azure-core transport (one pooled HTTP session) per trust setting, shared by roles.

    The session has no retries of its own: azure-core's RetryPolicy does them, once.
    """
    key = ("azure-http", policy, ca_bundle)
    if key not in shared:
        import requests
        from azure.core.pipeline.transport import RequestsTransport
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        adapter = HTTPAdapter(pool_maxsize=POOL_SIZE)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        shared[key] = RequestsTransport(
            session=session,
            session_owner=False,
            connection_timeout=policy.connect_timeout,
            read_timeout=policy.read_timeout,
            connection_verify=verify_setting(ca_bundle),
        )
    return shared[key]


def _refusal(exc: Any, assertions: list[str]) -> UpstreamError:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    error = entra_error(response)
    if error is None:
        # Not an error document: whatever the body holds (possibly a token) is not repeated.
        return UpstreamError(
            f"Microsoft Entra ID returned an unexpected response (HTTP {status})",
            reason=f"entra HTTP {status}: {type(exc).__name__}",
        )
    code, description = error
    return refusal("Microsoft Entra ID", f"entra HTTP {status}", code, description, assertions)


def entra_error(response: Any) -> tuple[str, str] | None:
    """(error, error_description) from an Entra ID token endpoint error document, else None."""
    if response is None:
        return None
    try:
        doc = json.loads(response.text())
    except (ValueError, TypeError, AttributeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return None
    description = doc.get("error_description")
    if not isinstance(description, str) or not description:
        codes = doc.get("error_codes")
        description = f"AADSTS{codes[0]}" if isinstance(codes, list) and codes else ""
    return doc["error"], description
