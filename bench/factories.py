"""The WSGI apps the benchmarks measure, and the switches that turn broker steps off.

- `hello_app`: a Flask POST endpoint that does nothing (the HTTP floor).
- `floor_app`: the irreducible work of one exchange and nothing else: one RS256 verify of the CI
  token against a preloaded key, one ES256 sign of a small assertion, one boto3
  `assume_role_with_web_identity` (client built once) to the STS; with `brokers_client`, through
  the broker's own STS client instead of the SDK's defaults.
- `sts_app`: an STS that answers every call with a canned AssumeRoleWithWebIdentity response, at
  once or after `delay` seconds (standing in for a real round trip to AWS).
- `broker_app`: the broker app, built as `ci-broker serve` builds it but with a chosen JWKS
  refresh interval; with `without_listed`, policy, replay, audit, logging and metrics are off.
- `variants`: each of the broker's own steps, switched off (diagnostics for `bench.steps` and
  `without_listed`: the broker against them is what those steps cost).

`python -m bench.apps` serves one of these under gunicorn; `bench.steps` calls them in process.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

from bench.harness import REGION, ROLE_ARN

Patches = Callable[[], list[Any]]
LISTED = "no policy/replay/audit/logs/metrics"


def variants() -> dict[str, Patches]:
    """Each of the broker's own steps, switched off; imported late (after the metrics set-up)."""
    import broker.app as app
    import broker.exchange as exchange
    import broker.metrics as metrics
    import broker.requestid as requestid
    import broker.verify as verify
    from broker.config import Config
    from broker.policy import Decision

    granted = Decision("bench-deploy", True, 0, ())

    def decide(config: Config, role_name: str, *args: Any, **kwargs: Any) -> Any:
        return config.roles[role_name], granted

    def listed() -> list[Any]:
        # What the 10% covers: policy, replay, audit, logging (the request ids every log
        # line and audit event carries) and metrics (the exchange counter, both latency
        # histograms, the replay-refusal counter), all off at once.
        return [
            mock.patch.object(Config, "decide", decide),
            mock.patch.object(exchange.Broker, "admit_and_spend", lambda self, verified: None),
            mock.patch.object(exchange.audit, "emit", lambda event: None),
            mock.patch.object(
                requestid.RequestIds,
                "__call__",
                lambda self, env, start: self.wsgi_app({**env, requestid.ENVIRON_KEY: "bench"}, start),
            ),
            mock.patch.object(
                metrics._TimedWSGI, "__call__", lambda self, env, start: self.wsgi_app(env, start)
            ),
            mock.patch.object(exchange.metrics, "upstream_finished", lambda *a, **k: None),
            mock.patch.object(exchange.metrics, "exchange_finished", lambda *a: None),
        ]

    return {
        LISTED: listed,
        "no audit event": lambda: [mock.patch.object(exchange.audit, "emit", lambda event: None)],
        "no body checks": lambda: [
            mock.patch.object(app.HttpExchange, "ask", lambda self: exchange.Ask("bench-deploy", None))
        ],
        "no claim checks": lambda: [
            mock.patch.object(verify.TokenVerifier, "_check_claims", lambda *a: None),
            mock.patch.object(verify.TokenVerifier, "_check_with_pyjwt", lambda *a: None),
        ],
        "no policy": lambda: [mock.patch.object(Config, "decide", decide)],
        "no replay record": lambda: [
            mock.patch.object(exchange.Broker, "admit_and_spend", lambda self, verified: None)
        ],
        "no exchange counter": lambda: [
            mock.patch.object(exchange.metrics, "exchange_finished", lambda *a: None)
        ],
    }


STS_XML = """<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>role:bench-deploy</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/bench-deploy/bench</Arn>
      <AssumedRoleId>AROABENCHBENCHBENCH01:bench</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIABENCHBENCHBENCH1</AccessKeyId>
      <SecretAccessKey>benchbenchbenchbenchbenchbenchbenchbench</SecretAccessKey>
      <SessionToken>{session_token}</SessionToken>
      <Expiration>{expiration}</Expiration>
    </Credentials>
    <Provider>http://127.0.0.1</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"""


def sts_app(delay: float = 0.0) -> Callable[..., Iterable[bytes]]:
    expiration = (datetime.now(UTC) + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    # A session token of realistic size (AWS's are several hundred bytes), so parsing costs the same.
    body = STS_XML.format(
        session_token=base64.b64encode(secrets.token_bytes(600)).decode(), expiration=expiration
    ).encode()
    headers = [
        ("Content-Type", "text/xml"),
        ("Content-Length", str(len(body))),
        ("x-amzn-RequestId", "00000000-0000-0000-0000-000000000000"),
    ]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(length)
        if delay:
            time.sleep(delay)
        start_response("200 OK", headers)
        return [body]

    return app


def hello_app() -> Any:
    from flask import Flask

    app = Flask("hello")

    @app.post("/v1/exchange")
    def hello() -> Any:
        return {"hello": "world"}

    return app


def floor_app(
    issuer_public_pem: bytes, signing_key_pem: bytes, sts_url: str, brokers_client: bool = False
) -> Any:
    """The floor; with `brokers_client`, its STS call goes through the broker's own STS client.

    The broker's client is cheaper per call than the SDK's defaults (see `broker.clouds.aws`), so
    the floor built with it isolates the cost of the broker's own steps from that saving.
    """
    import boto3
    import jwt
    from botocore import UNSIGNED
    from botocore.config import Config
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from flask import Flask, jsonify, request

    public_key = serialization.load_pem_public_key(issuer_public_pem)
    signing_key = serialization.load_pem_private_key(signing_key_pem, password=None)
    if brokers_client:
        from broker.clouds.aws import AwsSettings, _sts_client

        sts = _sts_client(
            AwsSettings(
                role_arn=ROLE_ARN,
                region=REGION,
                duration=3600,
                mode="web_identity",
                session_tags=(),
                session_policy=None,
                sts_endpoint=sts_url,
            ),
            {},
        )
    else:
        sts = boto3.session.Session().client(
            "sts",
            region_name=REGION,
            endpoint_url=sts_url,
            config=Config(
                connect_timeout=5,
                read_timeout=10,
                retries={"max_attempts": 3, "mode": "standard"},
                signature_version=UNSIGNED,
            ),
        )
    app = Flask("floor")

    @app.post("/v1/exchange")
    def exchange() -> Any:
        token = request.headers["Authorization"][len("Bearer ") :]
        signing_input, _, signature = token.rpartition(".")
        public_key.verify(
            base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),  # type: ignore[union-attr]
            signing_input.encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": "http://127.0.0.1",
                "sub": "role:bench-deploy",
                "aud": "sts.amazonaws.com",
                "iat": now,
                "nbf": now,
                "exp": now + 300,
                "jti": secrets.token_urlsafe(18),
            },
            signing_key,
            algorithm="ES256",
        )
        creds = sts.assume_role_with_web_identity(
            RoleArn=ROLE_ARN, RoleSessionName="bench", WebIdentityToken=assertion, DurationSeconds=3600
        )["Credentials"]
        return jsonify(
            role="bench-deploy",
            cloud="aws",
            expires_at=creds["Expiration"].isoformat(),
            credentials={
                "access_key_id": creds["AccessKeyId"],
                "secret_access_key": creds["SecretAccessKey"],
                "session_token": creds["SessionToken"],
                "region": REGION,
            },
        )

    return app


def broker_app(config_path: str, jwks_refresh: float, without_listed: bool = False) -> Any:
    from broker.app import create_app
    from broker.config import load_config
    from broker.jwks import KeyCacheSettings
    from broker.logs import configure_audit
    from broker.service import build_broker

    configure_audit(None)
    config = load_config(config_path)
    broker = build_broker(config, key_settings=KeyCacheSettings(refresh_interval=jwks_refresh))
    app = create_app(config, broker=broker)
    if without_listed:
        for patch in variants()[LISTED]():
            patch.start()  # for the life of this worker
    return app
