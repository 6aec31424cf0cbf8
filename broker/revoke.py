"""`ci-broker revoke` (contract section 9): end broker sessions now, and stop what the clouds issued.

A block (`broker.blocks`) stops new credentials. Credentials already issued are the clouds' to
honour, and each cloud offers a different lever, none of them as narrow as one CI job:

- AWS: an inline policy on the role that denies everything to sessions whose
  `aws:TokenIssueTime` is before a cutoff (what the IAM console's "Revoke active sessions" does).
  Every session of that role issued before the cutoff stops working, whoever holds it; callers
  the broker serves afterwards get new sessions, which the policy does not touch.
- GCP: disabling the role's service account rejects its existing access tokens at once (and
  refuses new ones) until it is enabled again. A role without a service account hands out
  federated tokens, which only disabling the whole workload identity pool rejects; disabling a
  provider only stops new exchanges (Google's API reference says both).
- Azure: Entra ID access tokens cannot be revoked. Deleting the federated credential stops new
  ones; those issued stay valid until they expire.

This module decides which sessions and roles a revoke means (`select`), what each cloud's step is
(`plan`), and performs the AWS and GCP steps with the operator's own credentials (each step's
`action.apply`):
boto3's default chain for IAM, google-auth's default credentials for Google's IAM API. The
broker's serving process never imports it.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from broker.blocks import BlockError, identity_claims
from broker.policy import Condition, compile_condition

if TYPE_CHECKING:
    from broker.config import Config, ProviderConfig
    from broker.sessions import Session, SessionStore

POLICY_NAME = "ci-broker-revoke"
POLICY_SID = "CiBrokerRevokeOlderSessions"
GCP_IAM_URL = "https://iam.googleapis.com"
GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
SESSION_ID = re.compile(r"[0-9a-f]{32}")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Entra ID picks an access token's lifetime between 60 and 90 minutes unless a token lifetime
# policy says otherwise; the broker cannot shorten it.
AZURE_RESIDUAL = "60 to 90 minutes (Entra ID's default access token lifetime)"
# IAM is global; its requests are signed for this region of the role's partition when the
# operator's configuration names none.
IAM_SIGNING_REGION = {"aws": "us-east-1", "aws-cn": "cn-north-1", "aws-us-gov": "us-gov-west-1"}
# Seconds a future --issued-before may be ahead of this machine's clock (clock skew only).
FUTURE_LEEWAY = 5


class RevokeError(ValueError):
    """A revoke that cannot be made from the operator's input, with the reason in plain words."""


# -- what a revoke means --------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The sessions a revoke ends (live ones only) and the roles whose cloud side it cuts."""

    sessions: tuple[Session, ...]
    roles: tuple[str, ...]
    cutoff: float  # credentials issued before this are the ones to stop
    note: str = ""  # something the operator should know about the selection


def parse_time(text: str, now: float) -> float:
    """`--issued-before`: an RFC 3339 time with its offset, not in the future."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RevokeError(
            f"--issued-before {text[:60]!r} is not an RFC 3339 time such as 2026-12-03T14:20:00Z"
        ) from None
    if when.tzinfo is None:
        raise RevokeError(
            f"--issued-before {text[:60]!r} needs a time zone (Z or +01:00): ambiguous otherwise"
        )
    at = when.timestamp()
    if at > now + FUTURE_LEEWAY:
        raise RevokeError(
            f"--issued-before {text[:60]!r} is in the future: it would deny credentials not issued yet"
        )
    return at


def gcp_iam_url(text: str | None) -> str:
    """`--gcp-iam-url`: where the operator's Google access token is sent, so https only (plain
    http to this machine alone, for a local endpoint)."""
    if text is None:
        return GCP_IAM_URL
    parts = urlsplit(text.strip())
    local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not (parts.scheme == "https" or local) or not parts.hostname or parts.query or parts.fragment:
        raise RevokeError(
            f"--gcp-iam-url {text[:80]!r} must be an https:// base URL (your Google access token is sent there)"
        )
    return text.strip().rstrip("/")


def select(
    config: Config,
    store: SessionStore,
    *,
    session_id: str | None = None,
    role: str | None = None,
    provider: str | None = None,
    claims: list[str] | None = None,
    issued_before: str | None = None,
    now: float | None = None,
) -> Selection:
    """What `revoke`'s arguments mean against the config and the session store; raises RevokeError
    (nothing matched, bad input) before anything is changed."""
    now = time.time() if now is None else now
    cutoff = parse_time(issued_before, now) if issued_before is not None else now
    if sum(x is not None for x in (session_id, role, provider)) != 1:
        raise RevokeError("give exactly one of --session ID, --role R or --provider P --claim NAME=VALUE")
    if claims and provider is None:
        raise RevokeError("--claim names an identity only together with --provider")
    if session_id is not None:
        return _by_session(config, store, session_id, cutoff, now)
    if role is not None:
        if role not in config.roles:
            raise RevokeError(f"--role {role!r} is not a configured role (a typo would match nobody)")
        live = tuple(s for s in store.sessions(now) if s.role == role and s.created_at < cutoff)
        return Selection(live, (role,), cutoff)
    assert provider is not None
    try:
        known, values = identity_claims(config, provider, claims or [], what="a revoke")
    except BlockError as exc:
        raise RevokeError(str(exc)) from None
    conditions = tuple(compile_condition(n, v, known.schema) for n, v in values.items())
    live = tuple(
        s
        for s in store.sessions(now)
        if s.provider == provider and s.created_at < cutoff and _holds(conditions, s.claims, known)
    )
    roles = sorted({s.role for s in live} | set(allowed_roles(config, known, conditions)))
    if not roles:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise RevokeError(
            f"{provider} {shown} matches no live session and no role's allow rule: nothing to revoke "
            "(check the claim values with `ci-broker explain`)"
        )
    return Selection(live, tuple(roles), cutoff)


def _by_session(config: Config, store: SessionStore, session_id: str, cutoff: float, now: float) -> Selection:
    if not SESSION_ID.fullmatch(session_id):
        raise RevokeError(f"--session {session_id[:80]!r} is not a session id (32 hex digits)")
    session = store.get(session_id)
    if session is None:
        raise RevokeError(f"no session {session_id} in the store (expired and purged, or never issued)")
    if session.role not in config.roles:
        raise RevokeError(
            f"session {session_id} is for role {session.role!r}, which this config does not have"
        )
    if session.ended_at is not None:
        ended = _rfc3339(session.ended_at)
        return Selection((), (session.role,), cutoff, f"session {session_id} had already ended at {ended}")
    if session.expires_at <= now:
        expired = _rfc3339(session.expires_at)
        return Selection(
            (), (session.role,), cutoff, f"session {session_id} had already expired at {expired}"
        )
    return Selection((session,), (session.role,), cutoff)


def _holds(conditions: tuple[Condition, ...], claims: Mapping[str, Any], provider: ProviderConfig) -> bool:
    return all(c.holds(claims, provider.schema) for c in conditions)


def allowed_roles(config: Config, provider: ProviderConfig, conditions: tuple[Condition, ...]) -> list[str]:
    """Roles an identity named by some of its claims may hold: a role one of whose allow rules for
    the provider none of the given claims contradicts. Claims not given could hold any value, so
    this errs towards more roles, as a revoke should."""
    given = {c.claim: c for c in conditions}
    out = []
    for name, role in config.roles.items():
        for rule in role.rules:
            if rule.provider == provider.name and all(
                c.holds({c.claim: given[c.claim].values[0]}, provider.schema)
                for c in rule.conditions
                if c.claim in given
            ):
                out.append(name)
                break
    return out


def end_sessions(
    store: SessionStore, sessions: tuple[Session, ...], now: float | None = None
) -> list[Session]:
    """End each session that is still live; returns those this call ended."""
    from broker.sessions import OPERATOR

    now = time.time() if now is None else now
    return [s for s in sessions if store.end(s.id, OPERATOR, now)]


# -- what stops credentials already issued ------------------------------------------------------


class Action(Protocol):
    def apply(self, clients: Clients) -> str:
        """Perform the step with the operator's credentials; returns what was done, raises
        StepFailed with a message that holds no secret."""
        ...


class StepFailed(Exception):
    """A cloud step that --apply could not perform, in words fit to print."""


@dataclass(frozen=True)
class CloudStep:
    cloud: str  # "aws" | "gcp" | "azure"
    roles: tuple[str, ...]  # the broker roles this step covers
    summary: str
    commands: tuple[str, ...]
    notes: tuple[str, ...] = ()
    action: Action | None = field(default=None, compare=False)  # what --apply performs


def deny_older_sessions_policy(cutoff: float) -> dict[str, Any]:
    """The inline policy that denies every action to sessions issued before `cutoff` (rounded up
    to the second: a session issued in the same second as the revoke is caught too)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": POLICY_SID,
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {"DateLessThan": {"aws:TokenIssueTime": _rfc3339(math.ceil(cutoff))}},
            }
        ],
    }


def policy_cutoff(document: Mapping[str, Any]) -> float | None:
    """The cutoff of a policy `deny_older_sessions_policy` wrote, or None for any other document."""
    try:
        (statement,) = document["Statement"]
        (when,) = statement["Condition"]["DateLessThan"].values()
        if statement.get("Sid") != POLICY_SID or statement.get("Effect") != "Deny":
            return None
        return datetime.strptime(when, TIME_FORMAT).replace(tzinfo=UTC).timestamp()
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class AwsDenyOlderSessions:
    role_arn: str
    cutoff: float

    @property
    def role_name(self) -> str:
        return self.role_arn.rsplit("/", 1)[1]

    def apply(self, clients: Clients) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        iam = clients.iam(self.role_arn.split(":")[1])
        wanted = deny_older_sessions_policy(self.cutoff)
        try:
            existing = _existing_policy(iam, self.role_name)
            kept = policy_cutoff(existing) if existing is not None else None
            if kept is not None and kept >= math.ceil(self.cutoff):
                # A later cutoff already denies everything this one would: never weaken it.
                return f"{POLICY_NAME} on role {self.role_name} already denies sessions issued before {_rfc3339(kept)}; kept"
            iam.put_role_policy(
                RoleName=self.role_name,
                PolicyName=POLICY_NAME,
                PolicyDocument=json.dumps(wanted, separators=(",", ":")),
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise StepFailed(f"IAM refused: {error.get('Code')}: {str(error.get('Message'))[:200]}") from None
        except BotoCoreError as exc:
            raise StepFailed(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        cutoff = wanted["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
        return f"put {POLICY_NAME} on role {self.role_name}: sessions issued before {cutoff} are denied"


def _existing_policy(iam: Any, role_name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        document = iam.get_role_policy(RoleName=role_name, PolicyName=POLICY_NAME)["PolicyDocument"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchEntity":
            return None  # no such policy yet (or no such role: put_role_policy then says which)
        raise
    # boto3 hands the URL-encoded document back already decoded, as a dict.
    return json.loads(document) if isinstance(document, str) else dict(document)


@dataclass(frozen=True)
class GcpDisableServiceAccount:
    email: str
    iam_url: str

    def apply(self, clients: Clients) -> str:
        import requests

        url = f"{self.iam_url}/v1/projects/-/serviceAccounts/{self.email}:disable"
        session = clients.google()
        try:
            response = session.post(url, json={}, timeout=30)
        except requests.RequestException as exc:
            raise StepFailed(f"could not reach {self.iam_url}: {type(exc).__name__}") from None
        except Exception as exc:  # google-auth's RefreshError, TransportError: no token to be had
            raise StepFailed(
                f"could not get an access token with the default credentials ({type(exc).__name__})"
            ) from None
        if response.status_code != 200:
            token = getattr(session.credentials, "token", None)
            raise StepFailed(f"IAM refused: {response.status_code} {_google_error(response, token)}")
        return f"disabled service account {self.email}"


def _google_error(response: Any, token: str | None) -> str:
    """Google's error status and message; withheld if it quotes the operator's access token."""
    try:
        error = response.json()["error"]
        message = str(error["message"])
        if token and token in message:
            message = "(the message quoted the access token: withheld)"
        return f"{error['status']}: {message[:200]}"
    except (ValueError, KeyError, TypeError):
        return "(no Google error in the answer)"


class Clients:
    """The operator's cloud clients, built on first use from the SDKs' default credentials (boto3's
    chain; google-auth's application default credentials)."""

    def __init__(self) -> None:
        self._iam: dict[str, Any] = {}
        self._google: Any = None

    def iam(self, partition: str) -> Any:
        if partition not in self._iam:
            import boto3
            from botocore.exceptions import BotoCoreError

            try:
                session = boto3.session.Session()
                region = session.region_name or IAM_SIGNING_REGION.get(partition, "us-east-1")
                self._iam[partition] = session.client("iam", region_name=region)
            except BotoCoreError as exc:
                raise StepFailed(f"no AWS IAM client: {type(exc).__name__}: {str(exc)[:200]}") from None
        return self._iam[partition]

    def google(self) -> Any:
        if self._google is None:
            import google.auth
            from google.auth.exceptions import DefaultCredentialsError
            from google.auth.transport.requests import AuthorizedSession

            try:
                credentials, _ = google.auth.default(scopes=[GCP_SCOPE])
            except DefaultCredentialsError:
                raise StepFailed(
                    "no Google credentials: run `gcloud auth application-default login` or set "
                    "GOOGLE_APPLICATION_CREDENTIALS"
                ) from None
            self._google = AuthorizedSession(credentials)
        return self._google


def plan(config: Config, selection: Selection, *, gcp_iam_url: str = GCP_IAM_URL) -> list[CloudStep]:
    """One step per cloud resource the selected roles map to (two roles on one AWS role or one
    service account share a step), in the order of the roles."""
    grouped: dict[tuple[str, str], list[str]] = {}
    settings: dict[tuple[str, str], Any] = {}
    for name in selection.roles:
        role = config.roles[name]
        key = (role.cloud, _resource(role.cloud, role.settings))
        grouped.setdefault(key, []).append(name)
        settings[key] = role.settings
    builders = {"aws": _aws_step, "gcp": _gcp_step, "azure": _azure_step}
    return [
        builders[cloud](tuple(roles), settings[(cloud, resource)], selection.cutoff, gcp_iam_url)
        for (cloud, resource), roles in grouped.items()
    ]


def _resource(cloud: str, settings: Any) -> str:
    if cloud == "aws":
        return str(settings.role_arn)
    if cloud == "gcp":
        return str(settings.service_account or _pool(settings.audience))
    return f"{settings.tenant_id}/{settings.client_id}"


def _aws_step(roles: tuple[str, ...], s: Any, cutoff: float, gcp_iam_url: str) -> CloudStep:
    role_name = s.role_arn.rsplit("/", 1)[1]
    document = json.dumps(deny_older_sessions_policy(cutoff), separators=(",", ":"))
    when = _rfc3339(math.ceil(cutoff))
    return CloudStep(
        "aws",
        roles,
        f"deny every session of {s.role_arn} issued before {when} (inline policy {POLICY_NAME})",
        (
            shlex.join(
                [
                    "aws",
                    "iam",
                    "put-role-policy",
                    "--role-name",
                    role_name,
                    "--policy-name",
                    POLICY_NAME,
                    "--policy-document",
                    document,
                ]
            ),  # fmt: skip
        ),
        (
            "every job holding credentials for this AWS role loses them, not only the revoked "
            "identity; they get new ones at their next exchange",
            f"the policy replaces an earlier {POLICY_NAME}; remove it with `aws iam delete-role-policy "
            f"--role-name {role_name} --policy-name {POLICY_NAME}` once the longest session "
            f"({s.duration}s here) has expired",
        ),
        AwsDenyOlderSessions(s.role_arn, cutoff),
    )


def _gcp_step(roles: tuple[str, ...], s: Any, cutoff: float, gcp_iam_url: str) -> CloudStep:
    if s.service_account:
        project = s.service_account.partition("@")[2].split(".")[0]
        return CloudStep(
            "gcp",
            roles,
            f"disable service account {s.service_account}: Google rejects its existing access "
            "tokens and issues no new ones while it is disabled",
            (
                shlex.join(
                    [
                        "gcloud",
                        "iam",
                        "service-accounts",
                        "disable",
                        s.service_account,
                        f"--project={project}",
                    ]
                ),
            ),
            (
                "everything that uses this service account stops, not only the broker's jobs",
                "once the incident is over: "
                + shlex.join(
                    ["gcloud", "iam", "service-accounts", "enable", s.service_account, f"--project={project}"]
                ),
            ),
            GcpDisableServiceAccount(s.service_account, gcp_iam_url),
        )
    project, pool = _pool(s.audience).split("/")
    return CloudStep(
        "gcp",
        roles,
        f"federated tokens (no service account): only disabling workload identity pool {pool} "
        "rejects those already issued (disabling the provider stops new exchanges only)",
        (
            shlex.join(
                [
                    "gcloud",
                    "iam",
                    "workload-identity-pools",
                    "update",
                    pool,
                    "--location=global",
                    f"--project={project}",
                    "--disabled",
                ]
            ),  # fmt: skip
        ),
        (
            "--apply does not do this: it cuts every identity in the pool (every broker role on "
            "GCP, and anything else federated through it); decide, then run it yourself",
        ),
    )


def _pool(audience: str) -> str:
    """`<project number>/<pool>` of a provider's full resource name."""
    parts = audience.split("/")
    return f"{parts[parts.index('projects') + 1]}/{parts[parts.index('workloadIdentityPools') + 1]}"


def _azure_step(roles: tuple[str, ...], s: Any, cutoff: float, gcp_iam_url: str) -> CloudStep:
    commands = []
    for role in roles:
        name = f"broker-role-{role.replace('.', '-')}"  # terraform/modules/azure-trust's name
        commands.append(
            shlex.join(
                [
                    "az",
                    "ad",
                    "app",
                    "federated-credential",
                    "delete",
                    "--id",
                    s.client_id,
                    "--federated-credential-id",
                    name,
                ]
            )  # fmt: skip
        )
    return CloudStep(
        "azure",
        roles,
        f"Entra ID cannot revoke access tokens it issued: delete the federated credential of "
        f"client {s.client_id} so no new ones are issued, then wait out the tokens already issued",
        tuple(commands),
        (
            "for a user-assigned managed identity instead of an application: `az identity "
            "federated-credential delete --name <name above> --identity-name <identity> "
            "--resource-group <group>`",
            f"tokens already issued stay valid until they expire: at most {AZURE_RESIDUAL}",
            "removing the identity's role assignments cuts Azure Resource Manager access sooner "
            "(ARM checks them per request, after a propagation delay Azure puts at up to 30 minutes)",
            "--apply never changes Azure",
        ),
    )


def _rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime(TIME_FORMAT)
