"""`ci-broker demo`'s incident step (contract section 9): block a repository, watch its session's
refresh and its new exchanges refused and the alert written, revoke its session, unblock.

Blocks live in the shared store, so this step runs a second broker app on a sqlite store in the
demo's directory (same issuer URL and signing key, so the local clouds trust it as they trust the
first) and drives it through its WSGI interface; `block`, `revoke` and `unblock` are the real
command line, run in this process against that app's config file. The demo's own broker is left
as it was for the steps after.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import time
from typing import TYPE_CHECKING, Any

from broker.sandbox.stack import DEPLOY_ROLE_ARN

if TYPE_CHECKING:
    from broker.demo import Demo

ROLE = "deploy-prod"
REPOSITORY_ID = "892734123"
TICKET = "INC-4711"
OPERATOR_LOG = "operators.log"  # the incident config's audit sink, beside it
WAIT = 2.5  # seconds to wait for a block or an unblock (every replica's bound is 2)


def step_block(demo: Demo, step: str) -> None:
    from broker.app import create_app
    from broker.config import build_config

    box = demo.sandbox
    demo.heading(step, "An incident: block the repository, end its session, unblock")
    config = copy.deepcopy(demo.demo_config())
    config["server"]["replay_store"] = f"sqlite:///{box.workdir / 'incident.db'}"
    # Where the broker's audit lines would go: the commands write their own events there too.
    config["server"]["audit"] = {"sink": f"file:{OPERATOR_LOG}"}
    path = box.write_config(config, name="incident.yaml")
    app = create_app(build_config(copy.deepcopy(config), base_dir=box.workdir))
    client = app.test_client()

    def exchange() -> Any:
        token = box.github_token()
        demo.secrets.append(token)
        return client.post("/v1/exchange", json={"role": ROLE}, headers={"Authorization": f"Bearer {token}"})

    def refresh(refresh_token: str) -> Any:
        return client.post("/v1/refresh", json={}, headers={"Authorization": f"Bearer {refresh_token}"})

    def cli(*argv: str) -> tuple[int, list[str]]:
        from broker.cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main([argv[0], "--config", str(path), *argv[1:]])
        return code, out.getvalue().splitlines()

    try:
        granted = exchange()
        body = granted.get_json(silent=True) or {}
        demo.keep_secrets(body)
        session = body.get("session") or {}
        current = str(session.get("refresh_token") or "")
        if not demo.expect(
            granted.status_code == 200 and bool(current), "the job holds credentials and a session"
        ):
            return
        demo.say(
            f"a job of repository_id {REPOSITORY_ID} holds credentials and session {session.get('id')}", 3
        )

        identity = ("--provider", "github", "--claim", f"repository_id={REPOSITORY_ID}")
        code, lines = cli("block", *identity, "--reason", TICKET)
        block_id = lines[0] if code == 0 and lines else ""
        demo.say(f"$ ci-broker block --config {path.name} {' '.join(identity)} --reason {TICKET}", 3)
        demo.say(block_id, 5)
        if not demo.expect(
            code == 0 and block_id.startswith("blk-"), "the block is recorded", " ".join(lines)
        ):
            return
        audit_before = len(demo.audit)
        started, status = time.monotonic(), 200
        while time.monotonic() - started < WAIT:
            answer = refresh(current)
            status = answer.status_code
            if status != 200:
                break
            rotated = answer.get_json(silent=True) or {}
            demo.keep_secrets(rotated)  # granted before the broker's copy of the blocks caught up
            current = str((rotated.get("session") or {}).get("refresh_token") or current)
            time.sleep(0.02)
        took = time.monotonic() - started
        demo.say(f"the session's next refresh: {status} ({took * 1000:.0f} ms after the command returned)", 3)
        demo.expect(status == 403, "within 2 seconds the blocked identity's refresh is refused", str(status))
        refused = exchange()
        demo.say(f"a new job of that repository: {refused.status_code}", 3)
        demo.expect(refused.status_code == 403, "and so is its exchange (403, like any refusal)")
        events = demo.audit[audit_before:]
        named = [e for e in events if e.get("block_id") == block_id]
        alerts = [e for e in events if e.get("alert") == "blocked_identity"]
        if named:
            demo.say(
                f"audit: {named[-1].get('type')} refused, block_id {block_id}, reason {named[-1].get('reason')}",
                3,
            )
        if alerts:
            demo.say(f"audit: alert blocked_identity, severity {alerts[0].get('severity')}", 3)
        demo.expect(bool(named) and bool(alerts), "the audit log names the block and the alert is written")

        code, lines = cli("revoke", *identity, "--reason", TICKET)
        demo.say(f"$ ci-broker revoke --config {path.name} {' '.join(identity)} --reason {TICKET}", 3)
        ended = [line for line in lines if line.startswith("ended ")]
        aws = [line for line in lines if line.startswith("AWS ")]
        for line in ended + aws:
            demo.say(line, 5)
        demo.expect(
            code == 0
            and ended == [f"ended 1 broker session (reason: {TICKET})"]
            and DEPLOY_ROLE_ARN in " ".join(aws),
            "revoke ends the session and prints the AWS deny policy for what STS already issued",
            " ".join(lines)[:300],
        )

        code, lines = cli("unblock", block_id)
        demo.say(f"$ ci-broker unblock --config {path.name} {block_id}", 3)
        started, status = time.monotonic(), 403
        while code == 0 and time.monotonic() - started < WAIT:
            answer = exchange()
            demo.keep_secrets(answer.get_json(silent=True) or {})
            status = answer.status_code
            if status == 200:
                break
            time.sleep(0.02)
        demo.say(f"a new job of that repository: {status}", 3)
        demo.expect(
            code == 0 and status == 200, "after unblock the repository's jobs are granted again", str(status)
        )
        after_revoke = refresh(current)
        demo.expect(
            after_revoke.status_code == 401, "the revoked session stays ended", str(after_revoke.status_code)
        )
        log = box.workdir / OPERATOR_LOG
        changes = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        for change in changes:
            demo.say(f"audit ({OPERATOR_LOG}): {change.get('type')} by {change.get('operator')}", 3)
        demo.expect(
            [c.get("type") for c in changes] == ["block", "revoke", "unblock"]
            and all(c.get("operator") for c in changes),
            "each command wrote an audit event naming who ran it",
        )
    finally:
        app.extensions["broker"].close()
