"""A local AWS STS: moto's server behind the trust check AWS itself would apply.

moto verifies nothing (it accepts garbage tokens and unknown roles), so AssumeRoleWithWebIdentity
calls are first checked here like an IAM OIDC provider for the broker's issuer and a role trust
policy with `aud == sts.amazonaws.com` and `sub == role:<name>`. Refusals come back in STS's own
XML error shape, so boto3 raises the same ClientError it would against AWS.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from werkzeug.wrappers import Request, Response

from broker.sandbox.trust import FederatedTrust, TrustRefused
from broker.sandbox.wsgi import LocalServer

ERROR_XML = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>
  <RequestId>00000000-0000-0000-0000-000000000000</RequestId>
</ErrorResponse>"""


class LocalSTS:
    def __init__(self, broker_issuer: str, roles: dict[str, str] | None = None) -> None:
        """`roles` maps a role ARN to the broker role name its trust policy names in `sub`."""
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.moto = DomainDispatcherApplication(create_backend_app)
        self.roles = dict(roles or {})
        self.trust = FederatedTrust(issuer=broker_issuer, audience="sts.amazonaws.com", max_lifetime=86400)
        self.calls: list[dict[str, str]] = []  # every STS action seen, with its form parameters
        self.echo_assertion = False  # answer like a careless upstream that quotes what it got
        self.server = LocalServer(self._wsgi)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> LocalSTS:
        self.server.start()
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
        role_arn = form.get("RoleArn", "")
        try:
            claims = self.trust.verify(form.get("WebIdentityToken", ""))
        except TrustRefused as exc:
            return "InvalidIdentityToken", _xml_escape(str(exc))
        expected = self.roles.get(role_arn)
        if expected is None or claims["sub"] != f"role:{expected}":
            return "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity"
        tags = claims.get("https://aws.amazon.com/tags")
        if tags is not None and not _valid_tags_claim(tags):
            return "InvalidIdentityToken", "malformed session tags claim"
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


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")[:300]
