"""docs/incident-response.md cannot drift from the code: every `ci-broker` command in it parses
against the real command line, the runbook's own sequence (block, blocks, revoke, unblock) runs as
written against a broker on a sqlite store, and every audit search in it (`jq ...`) runs against
the audit events that broker wrote, finds something, and names only fields the events carry."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from broker.cli import COMMAND_GROUPS, main

RUNBOOK = Path(__file__).resolve().parent.parent / "docs" / "incident-response.md"
DOC_BLOCK_ID = "blk-3f9c2e1b4d7a"
DOC_RUN_ID = "4242424242"
# The runbook's commands that run here as written (the rest only parse: --apply acts on clouds,
# a session id or a new key file are the reader's own).
RUN_AS_WRITTEN = ("block", "blocks", "revoke", "unblock")


def shell_lines() -> list[str]:
    """Every command line of the runbook's ```sh blocks, continuation lines joined."""
    text = RUNBOOK.read_text()
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                lines.append(line.strip())
    return lines


def broker_commands() -> list[list[str]]:
    commands = []
    for line in shell_lines():
        argv = shlex.split(line)
        if argv[0] == "kubectl":
            argv = argv[argv.index("--") + 1 :]
        if argv[0] == "ci-broker":
            commands.append(argv[1:])
    return commands


def jq_commands() -> list[str]:
    return [line for line in shell_lines() if line.startswith("jq ")]


def parser() -> argparse.ArgumentParser:
    """The real command line, as `broker.cli.main` builds it."""
    p = argparse.ArgumentParser(prog="ci-broker")
    sub = p.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def test_the_runbook_covers_each_step_in_order():
    commands = [argv[0] for argv in broker_commands()]
    firsts = [commands.index(name) for name in ("block", "revoke", "keys", "unblock")]
    assert firsts == sorted(firsts), commands
    assert jq_commands(), "the audit log step has its searches"
    headings = re.findall(r"^## (\d)\. (\w+)", RUNBOOK.read_text(), re.M)
    assert [h[1] for h in headings] == ["Block", "Revoke", "Search", "If", "When"]


@pytest.mark.parametrize("argv", broker_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_every_command_parses_against_the_real_cli(argv):
    args = parser().parse_args(argv)  # SystemExit(2) on anything the CLI does not know
    assert callable(args.handler)


def test_the_runbook_runs_as_written_and_its_searches_find_the_events(
    sandbox, serve_config, audit_events, tmp_path, monkeypatch, capsys
):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (apt-get install jq)")
    config = sandbox.config_dict()
    config["server"]["replay_store"] = f"sqlite:///{tmp_path / 'state.db'}"
    config["roles"]["deploy-prod"]["session_lifetime"] = 7200
    # The commands' own events go where a broker's would; this broker runs in the test's process.
    config["server"]["audit"] = {"sink": "file:operators.log"}
    (tmp_path / "broker.yaml").write_text(json.dumps(config))
    (tmp_path / sandbox.key_path.name).write_bytes(sandbox.key_path.read_bytes())
    monkeypatch.chdir(tmp_path)
    app = serve_config(config)

    granted = sandbox.exchange(sandbox.github_token(run_id=DOC_RUN_ID))
    assert granted.status_code == 200, granted.text
    block_id = None
    for argv in broker_commands():
        if argv[0] not in RUN_AS_WRITTEN or "--apply" in argv or "--session" in argv:
            continue
        if argv[argv.index("--config") + 1] != "broker.yaml":
            continue  # the kubectl example: a pod's path
        if argv[0] == "revoke" and "--role" in argv:
            continue  # the --issued-before example names a time of the reader's incident
        argv = [block_id if a == DOC_BLOCK_ID else a for a in argv]
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, f"{argv}: {out}{err}"
        if argv[0] == "block":
            block_id = out.splitlines()[0]
            app.extensions["broker"].blocks.poll()
            refused = sandbox.exchange(sandbox.github_token())
            assert refused.status_code == 403
        if argv[0] == "revoke":
            assert "ended 1 broker session" in out  # the session the first exchange started
    assert block_id is not None
    deadline = time.monotonic() + 5
    while not any(e.get("type") == "alert" for e in audit_events) and time.monotonic() < deadline:
        time.sleep(0.05)

    operators = [json.loads(line) for line in (tmp_path / "operators.log").read_text().splitlines()]
    assert [e["type"] for e in operators] == ["block", "revoke", "unblock"]
    events = audit_events + operators
    (tmp_path / "audit.log").write_text("".join(json.dumps(e) + "\n" for e in events))
    carried = set().union(*(e.keys() for e in events))
    for command in jq_commands():
        result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        assert result.stdout.strip(), f"found nothing: {command}"
        assert fields_named(command) <= carried, f"{command} names fields no event carries"


def fields_named(command: str) -> set[str]:
    """The top-level event fields a jq filter reads: `.name` paths and `{name, ...}` shorthands."""
    program = shlex.split(command)[2 if command.startswith("jq -") else 1]
    names = set(re.findall(r"(?<![\w.])\.([a-z_]+)", program))
    for body in re.findall(r"\{([^}]*)\}", program):
        names.update(item.strip() for item in body.split(",") if re.fullmatch(r"\s*[a-z_]+\s*", item))
    return names


def test_the_field_check_is_not_vacuous():
    assert fields_named(
        "jq -c 'select(.type == \"alert\") | {time, alert, x: .claims.run_id}' audit.log"
    ) == {
        "type",
        "time",
        "alert",
        "claims",
    }
