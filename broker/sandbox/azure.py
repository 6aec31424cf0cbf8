"""A local Microsoft identity platform token endpoint, over https, with Entra ID's federation checks.

`POST /{tenant}/oauth2/v2.0/token` takes the client credentials grant with a JWT client assertion,
as azure-identity's ClientAssertionCredential sends it, and checks it the way Entra ID checks an
application's federated identity credentials (FICs):
- the tenant must exist (AADSTS90002) and hold the application `client_id` (AADSTS700016);
- the scope must be a known resource's `/.default` (AADSTS1002012, AADSTS500011);
- some FIC of that application must list exactly the assertion's `iss`, `sub` and `aud`
  (AADSTS70021), and the assertion must verify against the issuer's published JWKS
  (`FederatedTrust`), within its lifetime (AADSTS700024) and with a valid signature (AADSTS700027).
Errors come back as Entra's JSON: `error`, `error_description` starting with the AADSTS code,
`error_codes`, trace and correlation ids.

azure-identity refuses authorities that are not https, even on loopback, so the endpoint serves
TLS with a certificate from `LocalCA`, a throwaway CA whose PEM the broker is pointed at through the
role's `ca_bundle`. It also serves the instance discovery and OpenID metadata documents that
MSAL-based clients fetch first; ClientAssertionCredential itself never asks for them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from werkzeug.wrappers import Request, Response

from broker.sandbox.faults import Faults, InFlight
from broker.sandbox.trust import FederatedTrust, TrustRefused
from broker.sandbox.wsgi import LocalServer

TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RESOURCES = frozenset(
    {
        "https://management.azure.com",
        "https://graph.microsoft.com",
        "https://vault.azure.net",
        "https://storage.azure.com",
    }
)
TOKEN_LIFETIME = 3599


class LocalCA:
    """A throwaway certificate authority and a certificate for localhost / 127.0.0.1.

    Built with `cryptography` (a runtime dependency) so that `ci-broker demo` needs no test-only
    package; tests that need a second, untrusted CA use trustme.
    """

    def __init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ci-broker sandbox CA")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key())
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ca_ski, critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .sign(self._ca_key, hashes.SHA256())
        )

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.ca_pem)
        return path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain reads files only; the key lives on disk just long enough to be loaded.
        with tempfile.TemporaryDirectory() as tmp:
            chain, key = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
            chain.write_bytes(self.leaf_cert.public_bytes(serialization.Encoding.PEM) + self.ca_pem)
            key.write_bytes(
                self._leaf_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            context.load_cert_chain(chain, key)
        return context


@dataclass(frozen=True)
class FederatedCredential:
    issuer: str
    subject: str
    audiences: tuple[str, ...] = (TOKEN_EXCHANGE_AUDIENCE,)


@dataclass(frozen=True)
class LocalToken:
    tenant_id: str
    client_id: str
    subject: str  # the assertion's sub that obtained it
    resource: str
    expires_at: float


@dataclass
class _Application:
    credentials: list[FederatedCredential] = field(default_factory=list)


class LocalEntra:
    def __init__(
        self, broker_issuer: str, *, ca: LocalCA | None = None, resources: frozenset[str] = RESOURCES
    ) -> None:
        self.broker_issuer = broker_issuer
        self.ca = ca or LocalCA()
        self.resources = resources
        self.faults = Faults()
        self.in_flight = InFlight()  # what is being served: see InFlight
        self.calls: list[dict[str, Any]] = []  # every token request's non-secret fields
        self.client_assertions: list[str] = []  # every assertion received, for leak tests
        self.accepted: list[dict[str, Any]] = []  # claims of every assertion a FIC accepted
        self.issued: list[str] = []  # every access token issued, for leak tests
        self.echo_assertion = False  # refuse with an error that quotes the client assertion
        self._tenants: dict[str, dict[str, _Application]] = {}
        self._trusts: dict[str, FederatedTrust] = {}  # per audience
        self._tokens: dict[str, LocalToken] = {}
        self._lock = threading.Lock()
        self.server = LocalServer(self._wsgi, ssl_context=self.ca.server_context())

    # -- lifecycle and set-up ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> LocalEntra:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> LocalEntra:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def add_application(self, tenant_id: str, client_id: str) -> None:
        self._tenants.setdefault(tenant_id.lower(), {}).setdefault(client_id.lower(), _Application())

    def trust_role(
        self, tenant_id: str, client_id: str, role: str, audience: str = TOKEN_EXCHANGE_AUDIENCE
    ) -> None:
        """Add a FIC to the application: issuer = the broker, subject = role:<role>."""
        self.add_application(tenant_id, client_id)
        app = self._tenants[tenant_id.lower()][client_id.lower()]
        app.credentials.append(FederatedCredential(self.broker_issuer, f"role:{role}", (audience,)))
        self._trust(audience).subjects.add(f"role:{role}")

    def describe(self, token: str) -> LocalToken | None:
        """What an Azure resource provider would know about a bearer token issued here."""
        with self._lock:
            found = self._tokens.get(token)
        return found if found is not None and found.expires_at > time.time() else None

    def _trust(self, audience: str) -> FederatedTrust:
        if audience not in self._trusts:
            self._trusts[audience] = FederatedTrust(issuer=self.broker_issuer, audience=audience)
        return self._trusts[audience]

    # -- HTTP -------------------------------------------------------------------------------------
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self.in_flight.serving():
            return self._serve(environ, start_response)

    def _serve(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        parts = request.path.strip("/").split("/")
        fault = self.faults.take(request.path)
        if fault is not None and fault.status is not None:
            response = self._error(
                fault.status,
                "temporarily_unavailable",
                50196 if fault.status == 429 else 90006,
                "The server is temporarily unable to handle the request.",
            )
            if fault.retry_after is not None:
                response.headers["Retry-After"] = str(fault.retry_after)
        elif request.method == "POST" and len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            response = self._token(request, parts[0])
        elif request.method == "GET" and request.path == "/common/discovery/instance":
            response = self._instance_discovery()
        elif (
            request.method == "GET"
            and len(parts) == 4
            and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]
        ):
            response = self._openid_configuration(parts[0])
        else:
            response = self._error(
                404,
                "invalid_request",
                90002 if len(parts) == 1 else 900561,
                "The endpoint only accepts POST requests to /{tenant}/oauth2/v2.0/token.",
            )
        return response(environ, start_response)

    def _token(self, request: Request, tenant: str) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}
        assertion = form.pop("client_assertion", "")
        self.client_assertions.append(assertion)
        self.calls.append({"tenant": tenant, **form})
        if form.get("grant_type") != "client_credentials":
            return self._error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        if form.get("client_assertion_type") != JWT_BEARER or not assertion:
            return self._error(
                400,
                "invalid_request",
                90014,
                "The request body must contain the following parameter: 'client_assertion'.",
            )
        if self.echo_assertion:
            return self._error(
                400, "invalid_client", 50027, f"JWT token {assertion} is invalid or malformed."
            )
        applications = self._tenants.get(tenant.lower())
        if applications is None:
            return self._error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.",
            )
        client_id = form.get("client_id", "")
        app = applications.get(client_id.lower())
        if app is None:
            return self._error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant.",
            )
        scope = form.get("scope", "")
        if not scope.endswith("/.default") or " " in scope:
            return self._error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )
        resource = scope[: -len("/.default")]
        if resource not in self.resources:
            return self._error(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named {tenant}.",
            )
        claims = self._check_assertion(app, assertion)
        if isinstance(claims, Response):
            return claims
        token = "local-entra-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = LocalToken(
                tenant, client_id, claims["sub"], resource, time.time() + TOKEN_LIFETIME
            )
            self.accepted.append(claims)
            self.issued.append(token)
        return _json(
            {
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME,
                "ext_expires_in": TOKEN_LIFETIME,
                "access_token": token,
            }
        )

    def _check_assertion(self, app: _Application, assertion: str) -> dict[str, Any] | Response:
        """The verified claims, or Entra's refusal (the unverified look only picks the error code;
        `FederatedTrust.verify` checks everything again, signature first)."""
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return self._error(400, "invalid_request", 50027, "JWT token is invalid or malformed.")
        iss, sub, aud = unverified.get("iss"), unverified.get("sub"), unverified.get("aud")
        match = next(
            (c for c in app.credentials if c.issuer == iss and c.subject == sub and aud in c.audiences), None
        )
        if match is None or not isinstance(aud, str):
            return self._error(
                400,
                "invalid_client",
                70021,
                "No matching federated identity record found for presented assertion. "
                f"Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: "
                f"'{aud}'.",
            )
        try:
            return self._trust(aud).verify(assertion)
        except TrustRefused:
            if isinstance(unverified.get("exp"), (int, float)) and unverified["exp"] < time.time():
                return self._error(
                    400, "invalid_client", 700024, "Client assertion is not within its valid time range."
                )
            return self._error(400, "invalid_client", 700027, "Client assertion failed signature validation.")

    def _instance_discovery(self) -> Response:
        host = self.url.split("://", 1)[1]
        return _json(
            {
                "tenant_discovery_endpoint": f"{self.url}/{{tenant}}/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            }
        )

    def _openid_configuration(self, tenant: str) -> Response:
        if tenant.lower() not in self._tenants:
            return self._error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        base = f"{self.url}/{tenant}"
        return _json(
            {
                "issuer": f"{base}/v2.0",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "tenant_region_scope": "WW",
            }
        )

    def _error(self, status: int, error: str, code: int, text: str) -> Response:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        return _json(
            {
                "error": error,
                "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: "
                f"{correlation}\r\nTimestamp: {now}",
                "error_codes": [code],
                "timestamp": now,
                "trace_id": trace,
                "correlation_id": correlation,
                "error_uri": f"{self.url}/error?code={code}",
            },
            status,
        )


def _json(doc: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(doc), status=status, mimetype="application/json")
