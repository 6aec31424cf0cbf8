"""`ci-broker demo`: the whole flow on this machine, narrated step by step, doubling as a smoke test.

This is not part of the production request path and nothing there imports it. It drives the broker
from the outside exactly as a CI job would (HTTP to `/v1/exchange`), against `broker.sandbox`'s
local stand-ins for the CI issuers and the clouds, and checks every expectation explicitly: the
exit status is 0 only when each step behaved as the text says it did.

Tokens and credentials are never printed. Everything secret the demo handles is recorded in
`Demo.secrets`; the printer replaces any of them that would reach the output (and counts it in
`Demo.scrubbed`, which the tests require to stay 0: the scrubber is a safety net, not the design).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

ROLE = "deploy-prod"
GITLAB_ROLE = "gitlab-deploy"
ASSERTION_MAX_LIFETIME = 300
SESSION_LIFETIME = 3 * 3600
# What a reader sees of a CI job's token: the claims a policy is usually written against.
SHOWN_CLAIMS = (
    "iss",
    "aud",
    "sub",
    "repository",
    "repository_id",
    "ref",
    "ref_protected",
    "environment",
    "event_name",
    "job_workflow_ref",
    "run_id",
)
# The sandbox's other clouds, when it has them: display name, and what stands in for the cloud.
OTHER_CLOUDS = {
    "gcp": ("a GCP", "the local Google endpoints"),
    "azure": ("an Azure", "the local Entra ID endpoint"),
}
# The Buildkite step: the organization and pipeline a rule pins (buildkite_claims' own), and what
# of its token is shown.
BUILDKITE_ORG_ID = "0184990a-477b-4fa8-9968-496074483c77"
BUILDKITE_PIPELINE_ID = "0184990a-4782-42b5-afc1-16715b10b1a0"
BUILDKITE_SHOWN = (
    "organization_slug",
    "organization_id",
    "pipeline_id",
    "build_branch",
    "step_key",
    "job_id",
)
# A compact JWS (three base64url parts, the first two JSON objects): never legitimately in output.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Check:
    step: str
    expectation: str
    ok: bool


class Demo:
    """The sandbox plus the narrated walk-through. Use as a context manager, then `run()`."""

    def __init__(self, workdir: Path, out: TextIO = sys.stdout) -> None:
        from broker.sandbox.stack import Sandbox

        self.workdir = Path(workdir)
        self.out = out
        self.sandbox = Sandbox(self.workdir)
        self.secrets: list[str] = []  # every token, assertion and credential the demo touched
        self.scrubbed = 0
        self.checks: list[Check] = []
        self.audit: list[dict[str, Any]] = []
        self._step = ""
        self._state: dict[str, Any] = {}  # what one step hands to the next (token, response, ...)
        self._app: Any = None
        self._audit_handler: _AuditTap | None = None
        self._audit_level = logging.NOTSET
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> Demo:
        try:
            self.sandbox.start()
            logger = logging.getLogger("broker.audit")
            self._audit_level = logger.level
            self._audit_handler = _AuditTap(self.audit)
            logger.addHandler(self._audit_handler)
            logger.setLevel(logging.INFO)
            self._app = self.sandbox.serve_in_process(self.demo_config())
        except BaseException:
            self.__exit__(None, None, None)  # whatever did start must not outlive a failed start
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        logger = logging.getLogger("broker.audit")
        if self._audit_handler is not None:
            logger.removeHandler(self._audit_handler)
            logger.setLevel(self._audit_level)
        if self._app is not None:
            self._app.extensions["broker"].close()
        # Each local server takes up to half a second to notice a shutdown; stopping them together
        # makes the demo end promptly. Sandbox.stop() then finds them stopped (stop is idempotent).
        box = self.sandbox
        parts = [
            box.github,
            box.gitlab,
            box.sts,
            *(getattr(box, n) for n in ("gcp", "azure") if hasattr(box, n)),
        ]
        threads = [threading.Thread(target=part.stop) for part in parts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        box.stop()

    @property
    def config(self) -> Any:
        return self._app.extensions["broker"].config

    def demo_config(self) -> dict[str, Any]:
        """The sandbox's policy, with sessions (contract section 8) on the demo's AWS role."""
        config = self.sandbox.config_dict()
        config["roles"][ROLE]["session_lifetime"] = SESSION_LIFETIME
        return config

    # -- output -----------------------------------------------------------------------------------
    def say(self, text: str = "", indent: int = 0) -> None:
        with self._lock:
            for line in text.split("\n"):
                self.out.write(" " * indent + self._scrub(line) + "\n" if line else "\n")
            self.out.flush()

    def _scrub(self, line: str) -> str:
        for secret in self.secrets:
            if secret and secret in line:
                self.scrubbed += 1
                line = line.replace(secret, "<redacted>")
        line, n = _JWT.subn("<redacted token>", line)
        self.scrubbed += n
        return line

    def expect(self, ok: bool, expectation: str, observed: str = "") -> bool:
        """Record one expectation; `observed` says what happened instead, shown only on failure."""
        self.checks.append(Check(self._step, expectation, bool(ok)))
        detail = f" (observed: {observed})" if observed and not ok else ""
        self.say(f"{'ok' if ok else 'FAILED'}: {expectation}{detail}", 3)
        return bool(ok)

    def heading(self, step: str, title: str) -> None:
        self._step = step
        self.say()
        self.say(f"{step}. {title}")

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    # -- the walk-through -------------------------------------------------------------------------
    def run(self) -> bool:
        started = time.monotonic()
        self.introduce()
        steps: list[Callable[[], None]] = [
            self.step_mint,
            self.step_exchange,
            self.step_assertion,
            self.step_credentials,
            self.step_refused,
            self.step_replay,
            self.step_gitlab,
            self.step_other_clouds,
            self.step_sessions,
            self.step_incident,
            self.step_buildkite,
            self.step_policy_diff,
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:  # a smoke test reports the step that broke and carries on
                self.expect(
                    False, f"the step ran without error (it raised {type(exc).__name__}: {str(exc)[:300]})"
                )
        failed = [c for c in self.checks if not c.ok]
        self.say()
        elapsed = time.monotonic() - started
        if failed:
            self.say(f"{len(failed)} of {len(self.checks)} expectations FAILED ({elapsed:.1f} s):")
            for c in failed:
                self.say(f"step {c.step}: {c.expectation}", 2)
        else:
            self.say(
                f"All {len(self.checks)} expectations held ({elapsed:.1f} s). Nothing left "
                "this machine, and no token or credential was printed."
            )
        return not failed

    def introduce(self) -> None:
        box = self.sandbox
        self.say("ci-broker demo: a CI job trades its OIDC token for short-lived cloud credentials.")
        self.say("Everything runs on 127.0.0.1 with throwaway keys; no cloud account is involved.")
        self.say()
        self.say("Started:")
        rows = [
            ("GitHub Actions-like OIDC issuer", box.github.url),
            ("GitLab-like OIDC issuer", box.gitlab.url),
            ("AWS STS (moto, behind IAM's trust check)", box.sts.url),
        ]
        if hasattr(box, "gcp"):
            rows.append(("Google STS and IAM Credentials", box.gcp.url))
        if hasattr(box, "azure"):
            rows.append(("Microsoft Entra ID token endpoint (TLS)", box.azure.url))
        rows.append(("ci-broker (demo config, new ES256 key)", box.broker_url))
        for label, url in rows:
            self.say(f"{label:<44}{url}", 2)
        self.say()
        self.say(f"The policy for role {ROLE} (the whole demo config: `ci-broker demo --serve`):")
        import yaml

        role = self.demo_config()["roles"][ROLE]
        self.say(yaml.safe_dump({"roles": {ROLE: role}}, sort_keys=False).rstrip(), 2)

    def step_mint(self) -> None:
        from broker.sandbox.issuer import github_claims

        self.heading("1", "A GitHub Actions job asks its issuer for an OIDC token")
        requested = github_claims(aud=self.sandbox.broker_url)
        token = self.sandbox.github.mint(requested)
        self.secrets.append(token)
        claims = _payload(token)
        self.say("The token is a credential, so it is never shown. Its claims:", 3)
        self.show_claims(claims, SHOWN_CLAIMS)
        self.say(f"and iat/nbf/exp (valid {claims['exp'] - claims['iat']} s), jti {claims['jti']}", 5)
        self.expect(
            claims == {"iss": self.sandbox.github.url, **requested},
            "the issuer signed a JWT carrying these claims, for the broker's audience",
        )
        self._state.update(claims=claims, token=token)

    def step_exchange(self) -> None:
        self.heading("2", "The broker verifies the token and evaluates the role's policy")
        box, claims, token = self.sandbox, self._state["claims"], self._state["token"]
        self.say(
            f'POST {box.broker_url}/v1/exchange  {{"role": "{ROLE}"}}  Authorization: Bearer <the token>', 3
        )
        self.say(
            "It checks the signature against the issuer's published keys, then iss, aud, exp, "
            "nbf, iat\n(age), required claims, and that the token was not used before. "
            "The policy decision,\nas `ci-broker explain` prints it:",
            3,
        )
        allowed = self.show_trace(ROLE, claims)
        accepted_before = len(box.sts.accepted)
        audit_before = len(self.audit)
        response = box.exchange(token, ROLE)
        self._state.update(response=response, accepted_before=accepted_before)
        self.expect(allowed, "the policy allows this job (rule 0 holds)")
        self.expect(
            response.status_code == 200,
            "the broker answered 200 with credentials",
            f"{response.status_code} {_json(response).get('error')}",
        )
        event = self.last_audit(audit_before)
        if event is not None:
            self.say(
                f"The broker's audit event: outcome {event.get('outcome')}, "
                f"{event.get('reason')}, token sha256 {str(event.get('token_sha256'))[:16]}...",
                3,
            )
        self.expect(
            event is not None and event.get("outcome") == "granted" and event.get("matched_rule") == 0,
            "the audit log records the grant by rule 0 (with the token's hash, not the token)",
        )

    def step_assertion(self) -> None:
        from broker.sandbox.stack import DEPLOY_ROLE_ARN

        self.heading("3", "The broker signs its own assertion and exchanges it with AWS STS")
        box = self.sandbox
        self.secrets.extend(c["WebIdentityToken"] for c in box.sts.calls if "WebIdentityToken" in c)
        new = box.sts.accepted[self._state["accepted_before"] :]
        if not self.expect(
            len(new) == 1, "STS accepted exactly one assertion for this exchange", f"{len(new)} accepted"
        ):
            return
        assertion = new[0]
        self.say(f"AssumeRoleWithWebIdentity({DEPLOY_ROLE_ARN}) with an assertion whose claims are:", 3)
        first = ["iss", "sub", "aud", "jti"]
        self.show_claims(assertion, first + [k for k in assertion if k not in (*first, "iat", "nbf", "exp")])
        lifetime = assertion["exp"] - assertion["iat"]
        self.say(f"and iat/nbf/exp (valid {lifetime} s)", 5)
        self.say(
            "The local STS checked it the way IAM's OIDC provider and the role's trust policy "
            "would:\nkeys from the broker's /.well-known/jwks.json, exact iss, aud and sub.",
            3,
        )
        self.expect(assertion["iss"] == box.broker_url, "iss is the broker's own issuer URL")
        self.expect(
            assertion["sub"] == f"role:{ROLE}", f"sub is role:{ROLE}: the one condition the AWS role trusts"
        )
        self.expect(assertion["aud"] == "sts.amazonaws.com", "aud is sts.amazonaws.com")
        self.expect(
            0 < lifetime <= ASSERTION_MAX_LIFETIME, f"the assertion lives at most {ASSERTION_MAX_LIFETIME} s"
        )

    def step_credentials(self) -> None:
        from broker.sandbox.stack import DEPLOY_ROLE_ARN

        self.heading("4", "The job receives short-lived credentials and uses them")
        response = self._state["response"]
        body = response.json() if response.status_code == 200 else {}
        creds = body.get("credentials", {})
        self.secrets.extend(v for k, v in creds.items() if k != "region")
        if not self.expect(
            {"access_key_id", "secret_access_key", "session_token"} <= set(creds),
            "the response carries AWS credentials",
        ):
            return
        self.say(f"role {body['role']}, cloud {body['cloud']}, expires_at {body['expires_at']}", 3)
        for name, value in creds.items():
            self.say(f"{name:<18} {value if name == 'region' else redact(value)}", 5)
        expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        remaining = (expires - datetime.now(UTC)).total_seconds()
        self.expect(
            0 < remaining <= 3600 + 60,
            "they expire within the role's duration (3600 s)",
            f"{remaining:.0f} s left",
        )
        identity = self.caller_identity(creds)
        self.say(f"aws sts get-caller-identity with them: {identity.get('Arn')}", 3)
        account = DEPLOY_ROLE_ARN.split(":")[4]
        self.expect(
            str(identity.get("Arn", "")).startswith(f"arn:aws:sts::{account}:assumed-role/{ROLE}/"),
            f"AWS sees the job as the assumed role {ROLE}",
            str(identity.get("Arn")),
        )

    def step_refused(self) -> None:
        self.heading("5", "Jobs the policy does not cover are refused")
        attempts = [
            (
                "a job in another repository, even one that names its branch main and its\n"
                "environment production (names are the job author's to choose; the id is not)",
                {
                    "repository": "mallory/octo-repo",
                    "repository_id": "987654321",
                    "repository_owner": "mallory",
                    "repository_owner_id": "4242",
                    "sub": "repo:mallory/octo-repo:environment:production",
                    "workflow_ref": "mallory/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
                    "job_workflow_ref": "mallory/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
                },
                "repository_id",
            ),
            (
                "the right repository, but an unprotected feature branch",
                {
                    "ref": "refs/heads/try-something",
                    "ref_protected": "false",
                    "sub": "repo:octo-org/octo-repo:ref:refs/heads/try-something",
                },
                "ref",
            ),
        ]
        for label, overrides, failing_claim in attempts:
            self.refuse(label, overrides, failing_claim)

    def refuse(self, label: str, overrides: dict[str, Any], failing_claim: str) -> None:
        from broker.explain import explain
        from broker.sandbox.issuer import github_claims

        box = self.sandbox
        claims = github_claims(aud=box.broker_url, **overrides)
        token = box.github.mint(claims)
        self.secrets.append(token)
        self.say(f"{label}:", 3)
        self.show_claims(claims, ("repository", "repository_id", "ref", "environment"))
        accepted_before, audit_before = len(box.sts.accepted), len(self.audit)
        response = box.exchange(token, ROLE)
        body = _json(response)
        self.say(f"the broker answered {response.status_code} {body.get('error')}: {body.get('message')}", 5)
        self.say("the caller learns no more than that; the operator's explain trace says why:", 5)
        allowed = self.show_trace(ROLE, claims, indent=7)
        text, _ = explain(self.config, ROLE, claims, "github")
        self.expect(
            response.status_code == 403 and body.get("error") == "access_denied",
            "refused with 403 access_denied",
            f"{response.status_code} {body.get('error')}",
        )
        self.expect(
            not allowed and f"[FAIL] {failing_claim}:" in text,
            f"the trace shows the {failing_claim} condition failing",
        )
        event = self.last_audit(audit_before)
        self.expect(
            event is not None
            and event.get("outcome") == "refused"
            and failing_claim in str(event.get("reason")),
            "the audit log records the refusal and its reason",
        )
        self.expect(len(box.sts.accepted) == accepted_before, "no assertion reached the cloud")

    def step_replay(self) -> None:
        self.heading("6", "Replaying the first job's token is refused")
        box = self.sandbox
        accepted_before = len(box.sts.accepted)
        response = box.exchange(self._state["token"], ROLE)
        body = _json(response)
        self.say("the same token again, e.g. stolen from a log or an artifact after it was used:", 3)
        self.say(f"the broker answered {response.status_code} {body.get('error')}: {body.get('message')}", 5)
        self.expect(
            response.status_code == 401
            and body.get("error") == "invalid_token"
            and "already been used" in str(body.get("message")),
            "refused with 401 invalid_token: each token works once",
            f"{response.status_code} {body.get('error')}",
        )
        self.expect(len(box.sts.accepted) == accepted_before, "no assertion reached the cloud")

    def step_gitlab(self) -> None:
        self.heading("7", "The same broker serves GitLab CI")
        box = self.sandbox
        token = box.gitlab_token()
        self.secrets.append(token)
        claims = _payload(token)
        self.say(
            f"a pipeline of {claims['project_path']} (project_id {claims['project_id']}) on "
            f"protected ref {claims['ref']}, role {GITLAB_ROLE}:",
            3,
        )
        response = box.exchange(token, GITLAB_ROLE)
        body = _json(response)
        self.secrets.extend(v for k, v in body.get("credentials", {}).items() if k != "region")
        self.say(
            f"the broker answered {response.status_code}, credentials expire at {body.get('expires_at')}", 5
        )
        self.expect(
            response.status_code == 200 and body.get("cloud") == "aws",
            "a GitLab ID token is exchanged through the same policy engine",
            f"{response.status_code} {body.get('error')}",
        )
        self.secrets.extend(c["WebIdentityToken"] for c in box.sts.calls if "WebIdentityToken" in c)

    def step_other_clouds(self) -> None:
        """GCP and Azure, when the sandbox has their local endpoints (it may be an older build)."""
        box = self.sandbox
        clouds = [
            (name, getattr(box, name))
            for name in ("gcp", "azure")
            if hasattr(box, name) and f"{name}-deploy" in self.config.roles
        ]
        if not clouds:
            return
        self.heading("8", "The same kind of job gets GCP and Azure credentials")
        for cloud, endpoint in clouds:
            role = f"{cloud}-deploy"
            token = box.github_token()
            self.secrets.append(token)
            accepted_before = len(endpoint.accepted)
            response = box.exchange(token, role)
            body = _json(response)
            creds = body.get("credentials", {})
            self.secrets.extend(v for k, v in creds.items() if k in ("access_token", "federated_token"))
            self.secrets.extend(getattr(endpoint, "subject_tokens", []))
            self.secrets.extend(getattr(endpoint, "client_assertions", []))
            label, where = OTHER_CLOUDS[cloud]
            self.say(
                f"role {role}: the broker answered {response.status_code}, cloud {body.get('cloud')}, "
                f"expires_at {body.get('expires_at')}",
                3,
            )
            if "access_token" in creds:
                self.say(f"{'access_token':<18} {redact(creds['access_token'])}", 5)
            new = endpoint.accepted[accepted_before:]
            if new:
                self.say(
                    f"{where} verified the assertion like the real one would: sub "
                    f"{new[0].get('sub')}, aud {new[0].get('aud')}",
                    5,
                )
            described = endpoint.describe(creds.get("access_token", "")) if creds else None
            if described is not None:
                who = (
                    (described.service_account or described.principal)
                    if cloud == "gcp"
                    else f"application {described.client_id} in tenant {described.tenant_id}"
                )
                self.say(f"{label} API would see the token as {who}", 5)
            self.expect(
                response.status_code == 200 and body.get("cloud") == cloud and "access_token" in creds,
                f"{role} returned {label} access token",
                f"{response.status_code} {body.get('error')}",
            )
            self.expect(
                len(new) == 1 and new[0].get("sub") == f"role:{role}",
                f"{where} accepted exactly one assertion, with sub role:{role}",
                f"{len(new)} accepted",
            )
            self.expect(described is not None, f"the token is one {where} issued, and still valid")

    def step_buildkite(self) -> None:
        """Any CI that issues OIDC tokens: a Buildkite job, whose issuer every organization shares.

        A second broker app is built from the demo config plus a Buildkite provider and rule (same
        issuer URL and signing key, so the local STS trusts it as it trusts the first) and is called
        through its WSGI interface: the running demo broker is left as it is for the steps after.
        """
        from broker.app import create_app
        from broker.config import ConfigError, build_config
        from broker.sandbox.issuer import OMIT, LocalIssuer, buildkite_claims

        box = self.sandbox
        after = int(self._step) + 1 if self._step.isdigit() else 9  # numbered after the last step
        self.heading(str(after), "The same policy serves any CI with OIDC: a Buildkite job")
        rule = {
            "organization_id": BUILDKITE_ORG_ID,
            "pipeline_id": BUILDKITE_PIPELINE_ID,
            "build_branch": "main",
        }
        with LocalIssuer() as issuer:
            config = box.config_dict()
            config["providers"]["buildkite"] = {"issuer": issuer.url, "type": "buildkite"}
            config["roles"][ROLE]["allow"].append({"provider": "buildkite", "claims": rule})
            self.say("A provider of type buildkite and one more rule for role deploy-prod:", 3)
            self.say(f"providers.buildkite: {{issuer: {issuer.url}, type: buildkite}}", 5)
            self.say(f"allow: {{provider: buildkite, claims: {json.dumps(rule)}}}", 5)
            app = create_app(build_config(copy.deepcopy(config), base_dir=box.workdir))
            try:
                client = app.test_client()

                def exchange(token: str) -> Any:
                    self.secrets.append(token)
                    headers = {"Authorization": f"Bearer {token}"}
                    return client.post("/v1/exchange", json={"role": ROLE}, headers=headers)

                claims = buildkite_claims(aud=box.broker_url, jti=OMIT)
                self.say("buildkite-agent oidc request-token --claim organization_id,pipeline_id, from an", 3)
                self.say("older agent (no jti; a step without a key sends step_key null):", 3)
                self.show_claims({**claims, "step_key": None}, BUILDKITE_SHOWN)
                token = issuer.mint({**claims, "step_key": None})
                accepted_before = len(box.sts.accepted)
                response = exchange(token)
                body = response.get_json(silent=True) or {}
                self.secrets.extend(v for k, v in body.get("credentials", {}).items() if k != "region")
                self.say(f"the broker answered {response.status_code}, cloud {body.get('cloud')}", 5)
                new = box.sts.accepted[accepted_before:]
                self.expect(
                    response.status_code == 200 and len(new) == 1 and new[0].get("provider") == "buildkite",
                    "a Buildkite token gets AWS credentials through the same role and policy",
                    f"{response.status_code} {body.get('error')}",
                )
                again = exchange(token)
                self.expect(
                    again.status_code == 401,
                    "without a jti the token is still single use (keyed on the SHA-256 of what was signed)",
                    str(again.status_code),
                )
                other = issuer.mint(
                    {
                        **buildkite_claims(aud=box.broker_url),
                        "organization_id": "0190aaaa-0000-4000-8000-0000000000e1",
                    }
                )
                self.say("another organization's job, same issuer, same slugs, branch and step:", 3)
                refused = exchange(other)
                self.say(f"the broker answered {refused.status_code}", 5)
                self.expect(refused.status_code == 403, "another Buildkite organization is refused (403)")
            finally:
                app.extensions["broker"].close()
            unpinned = copy.deepcopy(config)
            unpinned["roles"][ROLE]["allow"][-1]["claims"] = {
                "organization_slug": "acme-inc",
                "build_branch": "main",
            }
            try:
                build_config(unpinned, base_dir=box.workdir)
                problem = ""
            except ConfigError as exc:
                problem = next((f.message for f in exc.findings if "tenant" in f.message), "")
            self.say("the same rule on slugs instead of ids is not a policy the broker will load:", 3)
            self.say(problem or "(it loaded)", 5)
            self.expect(bool(problem), "a rule that does not pin the organization's id is refused at load")

    def step_policy_diff(self) -> None:
        from broker.policydemo import step_policy_diff

        step_policy_diff(self, str(int(self._step) + 1) if self._step.isdigit() else "11", ROLE)

    def step_sessions(self) -> None:
        """Contract section 8: a session refreshed twice, a spent refresh token replayed, the end."""
        import requests

        self.heading("9", "A long job refreshes its credentials; a copied refresh token ends the session")
        box = self.sandbox
        token = box.github_token()
        self.secrets.append(token)
        body = _json(box.exchange(token, ROLE))
        session = body.get("session") or {}
        self.keep_secrets(body)
        self.say(
            f"With session_lifetime: {SESSION_LIFETIME} on {ROLE}, an exchange also returns a session: "
            f"id {session.get('id')},\nuntil {session.get('expires_at')}, and a refresh token "
            "(stored by the broker only as a hash).",
            3,
        )
        if not self.expect(bool(session.get("refresh_token")), "the exchange returned a session"):
            return
        tokens = [session["refresh_token"]]
        keys = [body["credentials"]["access_key_id"]]

        def refresh(refresh_token: str) -> tuple[int, dict[str, Any]]:
            response = requests.post(
                f"{box.broker_url}/v1/refresh",
                json={},
                headers={"Authorization": f"Bearer {refresh_token}"},
                timeout=30,
            )
            answer = _json(response)
            self.keep_secrets(answer)
            return response.status_code, answer

        for n in (1, 2):
            status, answer = refresh(tokens[-1])
            rotated = (answer.get("session") or {}).get("refresh_token")
            creds = answer.get("credentials") or {}
            self.say(
                f"POST /v1/refresh #{n}: {status}, new credentials {redact(creds.get('access_key_id', ''))} "
                f"until {answer.get('expires_at')}, and the next refresh token",
                3,
            )
            if not self.expect(
                status == 200 and bool(rotated) and rotated not in tokens,
                f"refresh {n}: the broker checked the policy again and issued fresh credentials",
                f"{status} {answer.get('error')}",
            ):
                return
            tokens.append(str(rotated))
            keys.append(creds.get("access_key_id", ""))
        self.expect(len(set(keys)) == 3, "each refresh issued new credentials")

        audit_before = len(self.audit)
        status, answer = refresh(tokens[0])
        self.say(
            f"the first refresh token again (a copy someone kept): {status} {answer.get('error')}: "
            f"{answer.get('message')}",
            3,
        )
        self.expect(status == 401, "a spent refresh token is refused with 401", str(status))
        alerts = [e for e in self.audit[audit_before:] if e.get("alert") == "refresh_reuse"]
        if alerts:
            self.say(
                f"audit: alert refresh_reuse, severity {alerts[0].get('severity')}, "
                f"session {alerts[0].get('details', {}).get('session_id')}",
                3,
            )
        self.expect(len(alerts) == 1, "the broker raised the refresh_reuse alert")
        status, answer = refresh(tokens[-1])
        self.say(f"the latest refresh token: {status} {answer.get('error')}: {answer.get('message')}", 3)
        self.expect(
            status == 401 and "ended" in str(answer.get("message")),
            "the whole session is dead: even the latest refresh token is refused",
            str(status),
        )

    def step_incident(self) -> None:
        """Contract section 9: a block takes effect, the session is revoked, the block removed."""
        from broker.demoincident import step_block

        step_block(self, "10")

    def keep_secrets(self, answer: dict[str, Any]) -> None:
        creds = answer.get("credentials") or {}
        self.secrets.extend(v for k, v in creds.items() if k != "region")
        refresh_token = (answer.get("session") or {}).get("refresh_token")
        if refresh_token:
            self.secrets.append(refresh_token)

    # -- helpers ----------------------------------------------------------------------------------
    def show_claims(self, claims: dict[str, Any], names: Iterable[str], indent: int = 5) -> None:
        names = [n for n in names if n in claims]
        width = max((len(n) for n in names), default=0)
        for name in names:
            value = claims[name]
            text = json.dumps(value) if value is None or isinstance(value, (dict, list)) else str(value)
            self.say(f"{name:<{width}}  {text}", indent)

    def show_trace(self, role: str, claims: dict[str, Any], indent: int = 5) -> bool:
        from broker.explain import explain

        text, allowed = explain(self.config, role, claims, "github")
        # explain's closing note (no signature checked) is about the offline command, not this run.
        lines = [line for line in text.splitlines() if not line.startswith("(")]
        self.say("\n".join(lines), indent)
        return allowed

    def last_audit(self, before: int) -> dict[str, Any] | None:
        new = self.audit[before:]
        return new[-1] if new else None

    def caller_identity(self, creds: dict[str, str]) -> dict[str, Any]:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=creds["access_key_id"],
            aws_secret_access_key=creds["secret_access_key"],
            aws_session_token=creds["session_token"],
            region_name=creds.get("region", "eu-west-1"),
        )
        client = session.client(
            "sts",
            endpoint_url=self.sandbox.sts.url,
            config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10),
        )
        return dict(client.get_caller_identity())

    # -- --serve ----------------------------------------------------------------------------------
    def serve(self, stdin: TextIO) -> None:
        """Keep the sandbox up and print commands to try; Enter rewrites the token files."""
        box = self.sandbox
        config_path = box.write_config()
        files = self.write_try_files()
        cli = "ci-broker" if shutil.which("ci-broker") else f"{shlex.quote(sys.executable)} -m broker"
        url = box.broker_url

        def exchange(token_file: Path) -> str:
            return (
                f"curl -s -X POST {url}/v1/exchange -H 'Content-Type: application/json' "
                f'-d \'{{"role": "{ROLE}"}}\' \\\n      '
                f'-H "Authorization: Bearer $(cat {shlex.quote(str(token_file))})"'
            )

        self.say()
        self.say("Everything keeps running. In another terminal, try:")
        self.say(f"curl -s {url}/.well-known/openid-configuration", 2)
        self.say(f"curl -s {url}/.well-known/jwks.json", 2)
        self.say()
        self.say(
            "# a job on main with environment production: granted (run it twice: the replay is refused)", 2
        )
        self.say(exchange(files["main"]), 2)
        self.say("# the same repository on a feature branch: 403", 2)
        self.say(exchange(files["feature"]), 2)
        self.say()
        self.say(f"{cli} check --config {shlex.quote(str(config_path))}", 2)
        self.say(
            f"{cli} explain --config {shlex.quote(str(config_path))} --role {ROLE} "
            f"--claims {shlex.quote(str(files['feature-claims']))}",
            2,
        )
        self.say()
        self.say("The token files are mode 0600, single use, and valid for 5 minutes: press Enter here")
        self.say("to write fresh ones. Audit events appear below as requests arrive.")
        self.say(f"Ctrl-C stops everything and deletes {self.workdir}.")
        if self._audit_handler is not None:
            self._audit_handler.printer = self.say_audit
        for _ in stdin:
            self.write_try_files()
            self.say("wrote fresh tokens to the same files")
        while True:  # stdin closed (not a terminal): wait for Ctrl-C or SIGTERM
            time.sleep(3600)

    def write_try_files(self) -> dict[str, Path]:
        from broker.sandbox.issuer import github_claims

        box = self.sandbox
        feature = github_claims(
            aud=box.broker_url,
            ref="refs/heads/try-something",
            ref_protected="false",
            sub="repo:octo-org/octo-repo:ref:refs/heads/try-something",
        )
        main = github_claims(aud=box.broker_url)
        files = {
            "main": self.workdir / "token-main.jwt",
            "feature": self.workdir / "token-feature.jwt",
            "feature-claims": self.workdir / "claims-feature.json",
        }
        for name, claims in (("main", main), ("feature", feature)):
            token = box.github.mint(claims)
            self.secrets.append(token)
            write_private(files[name], token)
        write_private(files["feature-claims"], json.dumps(feature, indent=2) + "\n")
        return files

    def say_audit(self, event: dict[str, Any]) -> None:
        claims = event.get("claims") or {}
        where = " ".join(str(claims[k]) for k in ("repository", "ref") if k in claims)
        if event.get("outcome") == "granted":
            self.say(f"audit: granted {event.get('role')} to {where} ({event.get('reason')})")
        else:
            self.say(
                f"audit: refused {event.get('role')} to {where or 'a token that failed verification'}: "
                f"{event.get('error')}: {event.get('reason')}"
            )


class _AuditTap(logging.Handler):
    """Collects the broker's audit events, so the demo can show what the broker itself decided."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        super().__init__(logging.INFO)
        self.events = events
        self.printer: Callable[[dict[str, Any]], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = json.loads(record.getMessage())
        except ValueError:
            return
        self.events.append(event)
        if self.printer is not None:
            self.printer(event)


def redact(value: str) -> str:
    """Enough to recognise the kind of value (an ASIA... key is temporary), nothing usable."""
    return f"{value[:4]}... ({len(value)} characters, redacted)"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, 0600 from the first byte, replacing it atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def _payload(token: str) -> dict[str, Any]:
    import base64

    part = token.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return payload


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _stop_on_signals() -> dict[int, Any]:
    """Ctrl-C and `kill` both end --serve through KeyboardInterrupt, so the workdir is removed.

    SIGINT is reset too: a shell starts background jobs with it ignored, and Python then never
    installs its own handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def missing_demo_module() -> str | None:
    """The module of the `demo` extra that cannot be imported (moto's server app), or None."""
    import warnings

    try:
        with warnings.catch_warnings():
            # moto warns "install moto[server]" before re-raising; the demo extra is the answer.
            warnings.simplefilter("ignore")
            import moto.server  # noqa: F401
    except ImportError as exc:
        return (exc.name or "moto").partition(".")[0]  # the package to install, not a submodule
    return None


def run_demo(serve: bool = False, *, out: TextIO | None = None, stdin: TextIO | None = None) -> int:
    """Run the walk-through (and with `serve`, keep running until Ctrl-C); 0 if every step held."""
    out = out or sys.stdout
    missing = missing_demo_module()
    if missing is not None:
        print(
            f"error: the demo's local AWS STS needs the demo extra ({missing} is not installed): "
            "pip install 'ci-broker[demo]' (from a clone: make demo)",
            file=sys.stderr,
        )
        return 2
    # Everything is on loopback: a proxy configured for the outside world must not intercept it.
    no_proxy = [p for p in os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")).split(",") if p]
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(no_proxy + ["127.0.0.1", "localhost"])
    workdir = Path(tempfile.mkdtemp(prefix="ci-broker-demo-"))  # 0700: holds the demo's key
    try:
        with Demo(workdir, out) as demo:
            ok = demo.run()
            if serve:
                previous = _stop_on_signals()
                try:
                    demo.serve(stdin or sys.stdin)
                except KeyboardInterrupt:
                    demo.say("\nstopped")
                finally:
                    for sig, old in previous.items():
                        if old is not None:
                            signal.signal(sig, old)
        return 0 if ok else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the sandbox could not start: say so plainly, as a failed smoke test
        print(f"error: the demo could not start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
