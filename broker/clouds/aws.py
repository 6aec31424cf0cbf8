"""AWS: STS credentials for a granted role, through boto3.

`web_identity` (the default) calls AssumeRoleWithWebIdentity with the broker's own assertion
(aud `sts.amazonaws.com`, sub `role:<name>`): the broker holds no AWS keys, and the role's trust
policy pins exactly that subject. Session tags travel inside the assertion, in the claim AWS reads
them from. `assume_role` instead uses the broker's ambient AWS credentials, for accounts that
prefer to trust one broker principal.
"""

from __future__ import annotations

import functools
import json
import re
import string
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.clouds import Grant, Issued
from broker.clouds._http import DEFAULT_POLICY, POOL_SIZE, HttpPolicy, refusal
from broker.errors import AccessDenied, UpstreamError
from broker.schema import Section

AUDIENCE = "sts.amazonaws.com"
TAGS_CLAIM = "https://aws.amazon.com/tags"
MIN_DURATION, MAX_DURATION = 900, 43200
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 50, 128, 256
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}", re.ASCII)
TAG_KEY = re.compile(r"[\w.:/=+@ -]{1,128}", re.ASCII)
# ASCII only: Python's \w also matches Unicode letters and digits, which STS refuses in a session
# name ([\w+=,.@-] in AWS's ASCII sense) and which not every consumer of tags accepts.
_NOT_TAG_CHAR = re.compile(r"[^\w.:/=+@ -]", re.ASCII)
_NOT_SESSION_CHAR = re.compile(r"[^\w+=,.@-]", re.ASCII)


@dataclass(frozen=True)
class TagTemplate:
    key: str
    template: str
    fields: tuple[str, ...]  # context or claim names the template reads


@dataclass(frozen=True)
class AwsSettings:
    role_arn: str
    region: str | None
    duration: int
    mode: str
    session_tags: tuple[TagTemplate, ...]
    session_policy: str | None
    sts_endpoint: str | None


def _template_fields(template: str) -> tuple[str, ...]:
    """The `{name}` fields of a tag template; raises ValueError on anything but plain names."""
    fields = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or spec or conversion:
            raise ValueError(f"template field {{{name}}} must be a plain claim name")
        fields.append(name)
    return tuple(fields)


class AwsKind:
    def parse_settings(self, s: Section) -> AwsSettings | None:
        role_arn = s.string(
            "role_arn",
            required=True,
            pattern=ROLE_ARN,
            hint="expected arn:aws:iam::<12-digit account>:role/<name>",
        )
        region = s.string(
            "region", pattern=re.compile(r"[a-z]{2}(-[a-z]+)+-\d"), hint="an AWS region such as eu-west-1"
        )
        duration = s.integer("duration", 3600, minimum=MIN_DURATION, maximum=MAX_DURATION)
        mode = s.choice("mode", ("web_identity", "assume_role"), "web_identity")
        tags = self._tags(s)
        policy = self._policy(s)
        endpoint = s.url("sts_endpoint")
        s.finish()
        if not role_arn or duration is None or mode is None or tags is None:
            return None
        return AwsSettings(
            role_arn=role_arn,
            region=region,
            duration=duration,
            mode=mode,
            session_tags=tags,
            session_policy=policy,
            sts_endpoint=endpoint,
        )

    @staticmethod
    def _tags(s: Section) -> tuple[TagTemplate, ...] | None:
        raw = s.raw("session_tags", None)
        if raw is None:
            return ()
        if not isinstance(raw, dict):
            s.findings.error(s.at("session_tags"), "must be a mapping of tag key to value template")
            return None
        if len(raw) > MAX_TAGS:
            s.findings.error(s.at("session_tags"), f"AWS allows at most {MAX_TAGS} session tags")
            return None
        tags: list[TagTemplate] = []
        for key, template in raw.items():
            path = f"{s.at('session_tags')}.{key}"
            if not isinstance(key, str) or not TAG_KEY.fullmatch(key):
                s.findings.error(path, "tag keys are 1-128 letters, digits, spaces or _.:/=+-@")
                continue
            if not isinstance(template, str) or not template:
                s.findings.error(path, "must be a non-empty string template such as '{repository}'")
                continue
            try:
                tags.append(TagTemplate(key, template, _template_fields(template)))
            except ValueError as exc:
                s.findings.error(path, str(exc))
        return tuple(tags) if len(tags) == len(raw) else None

    @staticmethod
    def _policy(s: Section) -> str | None:
        raw = s.raw("session_policy", None)
        if raw is None:
            return None
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                s.findings.error(
                    s.at("session_policy"), "must be an IAM policy document (YAML mapping or JSON text)"
                )
                return None
        if not isinstance(raw, dict) or "Statement" not in raw:
            s.findings.error(s.at("session_policy"), "must be an IAM policy document with a Statement")
            return None
        text = json.dumps(raw, separators=(",", ":"))
        if len(text) > 2048:
            s.findings.error(s.at("session_policy"), "AWS limits a session policy to 2048 characters")
            return None
        return text

    def max_duration(self, settings: AwsSettings) -> int:
        return settings.duration

    def min_duration(self, settings: AwsSettings) -> int:
        # STS refuses less; silently raising a request to it would hand out more than was asked.
        return MIN_DURATION

    def build_backend(self, role: str, settings: AwsSettings, shared: dict[Any, Any]) -> AwsBackend:
        return AwsBackend(role, settings, shared)


KIND = AwsKind()


def session_name(grant: Grant) -> str:
    """`<provider>-<run id>-<repository>` in the characters and length AWS accepts."""
    raw = "-".join(
        filter(None, (grant.provider, grant.context.get("run_id"), grant.context.get("repository")))
    )
    name = _NOT_SESSION_CHAR.sub("-", raw)[:64]
    return name if len(name) >= 2 else f"ci-broker-{name}"


def render_tags(tags: tuple[TagTemplate, ...], grant: Grant) -> dict[str, str]:
    """Fill each template from the CI context or the raw claims; characters AWS refuses become '_'."""
    values: dict[str, str] = {}
    for tag in tags:
        fields: dict[str, str] = {}
        for name in tag.fields:
            value = grant.context.get(name, grant.claims.get(name))
            if value is None or isinstance(value, (dict, list)):
                raise AccessDenied(
                    reason=f"session tag {tag.key!r} needs claim {name!r}, which the token lacks",
                )
            fields[name] = value if isinstance(value, str) else json.dumps(value)
        rendered = _NOT_TAG_CHAR.sub("_", tag.template.format(**fields))[:MAX_TAG_VALUE]
        values[tag.key] = rendered
    return values


class AwsBackend:
    def __init__(self, role: str, settings: AwsSettings, shared: dict[Any, Any]) -> None:
        self.role = role
        self.settings = settings
        self.sts = _sts_client(settings, shared)
        from botocore.exceptions import BotoCoreError, ClientError  # botocore is loaded by now

        self._client_error, self._sdk_error = ClientError, BotoCoreError

    def issue(self, grant: Grant) -> Issued:
        s = self.settings
        # A requested duration was checked against the role's bounds before the token was spent.
        duration = grant.duration or s.duration
        tags = render_tags(s.session_tags, grant)
        params: dict[str, Any] = {
            "RoleArn": s.role_arn,
            "RoleSessionName": session_name(grant),
            "DurationSeconds": duration,
        }
        if s.session_policy:
            params["Policy"] = s.session_policy
        try:
            if s.mode == "web_identity":
                extra = {TAGS_CLAIM: {"principal_tags": {k: [v] for k, v in tags.items()}}} if tags else {}
                params["WebIdentityToken"] = grant.mint_assertion(AUDIENCE, extra)
                response = self.sts.assume_role_with_web_identity(**params)
            else:
                if tags:
                    params["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
                params["SourceIdentity"] = params["RoleSessionName"]
                response = self.sts.assume_role(**params)
        except self._client_error as exc:
            error = exc.response.get("Error", {})
            raise refusal(
                "AWS STS",
                "sts",
                str(error.get("Code", "Unknown")),
                str(error.get("Message", "")),
                [params.get("WebIdentityToken")],
            ) from None
        except self._sdk_error as exc:
            raise UpstreamError("AWS STS could not be reached", reason=f"sts {type(exc).__name__}") from None
        creds = response["Credentials"]
        credentials = {
            "access_key_id": creds["AccessKeyId"],
            "secret_access_key": creds["SecretAccessKey"],
            "session_token": creds["SessionToken"],
        }
        if s.region:
            credentials["region"] = s.region
        return Issued(expires_at=creds["Expiration"], credentials=credentials)


def _sts_client(settings: AwsSettings, shared: dict[Any, Any]) -> Any:
    """One STS client per (mode, endpoint, region), built at start-up and shared by roles.

    web_identity calls are unsigned on purpose: the broker must not go looking for AWS
    credentials (environment, files, instance metadata) that it does not need.
    """
    key = ("aws-sts", settings.mode, settings.sts_endpoint, settings.region)
    if key not in shared:
        region = settings.region or "us-east-1"
        if settings.mode == "web_identity":
            shared[key] = _unsigned_client(settings.sts_endpoint, region, DEFAULT_POLICY, POOL_SIZE)
        else:
            with _SESSION_LOCK:
                shared[key] = _client(
                    _botocore_session(), settings.sts_endpoint, region, DEFAULT_POLICY, POOL_SIZE
                )
    return shared[key]


@functools.cache
def _unsigned_client(endpoint: str | None, region: str, policy: HttpPolicy, pool_size: int) -> Any:
    """One unsigned client per endpoint and region in a process, kept across the brokers it builds.

    A client costs 10-15 ms of CPU to build and an unsigned one holds nothing of a broker's (no
    credentials; its settings are this key), so a broker built again (a reloaded config, the
    tests' hundreds) reuses it, warm connections included. Signed clients (assume_role) are
    built with each broker, so a reloaded config resolves credentials anew.
    """
    with _SESSION_LOCK:
        return _client(_unsigned_session(), endpoint, region, policy, pool_size, unsigned=True)


def _client(
    botocore_session: Any,
    endpoint: str | None,
    region: str,
    policy: HttpPolicy,
    pool_size: int,
    *,
    unsigned: bool = False,
) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    # The same timeouts and attempt count as every other cloud call (broker.clouds._http);
    # botocore's standard mode adds its own jittered backoff for throttling and 5xx.
    config = Config(
        connect_timeout=policy.connect_timeout,
        read_timeout=policy.read_timeout,
        retries={"total_max_attempts": policy.retries + 1, "mode": "standard"},
        signature_version=UNSIGNED if unsigned else None,
        # botocore's client-side check of types and minimum lengths re-checks what the broker
        # built itself from a validated config (ARN, bounded duration, session name and tags
        # already cut to AWS's alphabet and sizes) on every call; STS validates everything
        # server-side regardless.
        parameter_validation=False,
        max_pool_connections=pool_size,
    )
    return boto3.session.Session(botocore_session=botocore_session).client(
        "sts", region_name=region, endpoint_url=endpoint, config=config
    )


@functools.cache
def _unsigned_session() -> Any:
    """One botocore session for every unsigned client a process builds: building a session
    registers botocore's hundreds of event handlers (30-40 ms of CPU). An unsigned client never
    asks its session for credentials, and a client copies what it needs of the session when built."""
    return _botocore_session()


_SESSION_LOCK = threading.Lock()  # botocore sessions are not safe to build clients from concurrently


def _botocore_session() -> Any:
    """A botocore session whose response parser reads timestamps with the standard library.

    botocore parses every timestamp (STS's `Expiration`) with dateutil's general-purpose parser,
    which costs more CPU than all of the broker's own checks on an exchange. STS sends ISO 8601;
    anything else still goes to botocore's parser.
    """
    import botocore.session
    from botocore.utils import parse_timestamp

    def timestamp(value: Any) -> Any:
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is not None:
                return parsed
        return parse_timestamp(value)

    session = botocore.session.get_session()
    session.register_component("data_loader", _data_loader(session.get_config_variable("data_path")))
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=timestamp)
    return session


@functools.cache
def _data_loader(data_path: str | None) -> Any:
    """botocore's loader of its service models, one per process: a fresh session parses STS's
    JSON models and the endpoint rules again (about 0.2 s of CPU per client), so each broker built
    in one process (a reloaded config, the test suite's thousands) would pay it anew. Only the
    model files are shared; credentials stay each session's own."""
    import botocore.loaders

    return botocore.loaders.create_loader(data_path)
