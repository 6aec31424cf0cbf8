"""The apps the benchmark serves, all under the gunicorn settings `ci-broker serve` uses.

- `hello`: a Flask POST endpoint that does nothing (the HTTP floor).
- `floor`: the irreducible work of one exchange and nothing else: one RS256 verify of the CI token
  against a preloaded key, one ES256 sign of a small assertion, one boto3
  `assume_role_with_web_identity` (client built once) to the instant STS; with
  `--brokers-sts-client`, through the broker's own STS client instead of the SDK's defaults.
- `sts`: an STS that answers every call at once with a canned AssumeRoleWithWebIdentity response
  (optionally after `--delay` seconds, to stand in for a real round trip to AWS).
- `broker`: the broker app, built like `ci-broker serve` builds it but with a chosen JWKS refresh
  interval (the slow-JWKS run needs refreshes to happen while it measures); with
  `--without-listed`, with policy, replay, audit, logging and metrics switched off (a diagnostic:
  the broker against it is what those steps cost, the share the issue caps at 10%).

Run as `python -m bench.apps KIND --bind HOST:PORT [...]`.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

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
ROLE_ARN = "arn:aws:iam::123456789012:role/bench-deploy"
REGION = "eu-west-1"


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
        from bench.steps import LISTED, variants

        for patch in variants()[LISTED]():
            patch.start()  # for the life of this worker
    return app


def main() -> None:
    from gunicorn.app.base import BaseApplication

    from broker.server import apply_options, gunicorn_options, prepare_metrics_dir

    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("hello", "floor", "sts", "broker"))
    parser.add_argument(
        "--brokers-sts-client", action="store_true", help="floor: use the broker's STS client"
    )
    parser.add_argument("--bind", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--issuer-public-key")
    parser.add_argument("--signing-key")
    parser.add_argument("--sts-url")
    parser.add_argument("--config")
    parser.add_argument("--jwks-refresh", type=float, default=300.0)
    parser.add_argument(
        "--without-listed",
        action="store_true",
        help="broker: policy, replay, audit, logging and metrics off (diagnostic)",
    )
    args = parser.parse_args()

    def load() -> Any:
        if args.kind == "hello":
            return hello_app()
        if args.kind == "sts":
            return sts_app(args.delay)
        if args.kind == "floor":
            with open(args.issuer_public_key, "rb") as f, open(args.signing_key, "rb") as k:
                return floor_app(f.read(), k.read(), args.sts_url, args.brokers_sts_client)
        return broker_app(args.config, args.jwks_refresh, args.without_listed)

    class App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            apply_options(self.cfg, gunicorn_options(args.bind, args.workers, args.threads, "WARNING"))

        def load(self) -> Any:
            return load()

    metrics_dir, made = prepare_metrics_dir() if args.kind == "broker" else ("", False)
    master = os.getpid()
    try:
        App().run()
    finally:
        if made and os.getpid() == master:  # workers leave through this frame too
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
