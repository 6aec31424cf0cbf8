"""Runtime blocks (contract section 9): `ci-broker block|unblock|blocks` and their enforcement.

One broker process on a sqlite store here (the multi-replica behaviour on redis is
tests/test_blocks_replicas.py): what a block matches, that a matching exchange gets the same 403 as
any refusal with the block in the audit event and a `blocked_identity` alert, that bad input writes
nothing, that a record from a newer broker is refused loudly, and that a stale copy fails closed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from broker.blocks import BlockList, new_block, parse_duration
from broker.blockstore import RedisBlockStore, SqliteBlockStore
from broker.cli import main
from broker.config import build_config
from broker.errors import AccessDenied, Blocked
from tests.helpers import assert_refused, last_refusal
from tests.redis_support import redis_server_fixture


@pytest.fixture
def store_config(sandbox, tmp_path) -> tuple[dict[str, Any], Path]:
    """The sandbox's policy on a sqlite store in tmp_path, and its config file."""
    config = sandbox.config_dict()
    config["server"]["replay_store"] = f"sqlite:///{tmp_path / 'state.db'}"
    path = tmp_path / "broker.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    (tmp_path / sandbox.key_path.name).write_bytes(sandbox.key_path.read_bytes())
    return config, path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def block(capsys, config_file: Path, *args: str) -> str:
    code, out, err = cli(capsys, "block", "--config", str(config_file), *args)
    assert code == 0, err
    return out.splitlines()[0]


def stored(config_file: Path) -> dict[str, str]:
    loaded = json.loads(config_file.read_text())
    store = SqliteBlockStore(loaded["server"]["replay_store"][len("sqlite:///") :])
    try:
        return store.snapshot()[1]
    finally:
        store.close()


def synced(app: Any) -> None:
    """Make the in-process broker read the store now, rather than at its next poll."""
    app.extensions["broker"].blocks.poll()


# -- the command line -----------------------------------------------------------------------------


def test_block_prints_the_id_alone_on_the_first_line_and_blocks_lists_it(capsys, store_config):
    _, path = store_config
    block_id = block(
        capsys, path, "--provider", "github", "--claim", "repository_id=892734123", "--reason", "INC-4711"
    )
    assert block_id.startswith("blk-") and " " not in block_id
    code, out, _ = cli(capsys, "blocks", "--config", str(path), "--json")
    assert code == 0
    (listed,) = json.loads(out)
    assert listed["id"] == block_id
    assert listed["claims"] == {"repository_id": "892734123"}
    assert listed["role"] is None and listed["expires_at"] is None and listed["reason"] == "INC-4711"
    code, out, _ = cli(capsys, "blocks", "--config", str(path))
    assert block_id in out and "INC-4711" in out


def test_the_console_script_prints_the_id_on_the_first_line(store_config):
    _, path = store_config
    result = subprocess.run(
        [sys.executable, "-m", "broker", "block", "--config", str(path), "--provider", "github",
         "--claim", "repository_id=1", "--role", "gcp-deploy", "--for", "1h", "--reason", "INC-1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert list(stored(path)) == [first]


def test_unblock_removes_it_and_an_unknown_id_is_exit_2(capsys, store_config):
    _, path = store_config
    block_id = block(capsys, path, "--provider", "github", "--claim", "repository_id=1", "--reason", "x")
    assert cli(capsys, "unblock", "--config", str(path), block_id)[0] == 0
    assert stored(path) == {}
    code, _, err = cli(capsys, "unblock", "--config", str(path), block_id)
    assert code == 2 and "no block" in err
    code, _, err = cli(capsys, "unblock", "--config", str(path), "not-an-id")
    assert code == 2 and "not a block id" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "github", "--reason", "x"], "at least one --claim"),
        (
            ["--provider", "jenkins", "--claim", "repository_id=1", "--reason", "x"],
            "not a configured provider",
        ),
        (
            ["--provider", "github", "--claim", "repo_id=1", "--reason", "x"],
            "'repo_id' is not a claim github",
        ),
        (
            ["--provider", "github", "--claim", "project_id=20", "--reason", "x"],
            "'project_id' is not a claim",
        ),
        (["--provider", "github", "--claim", "repository_id", "--reason", "x"], "NAME=VALUE"),
        (["--provider", "github", "--claim", "repository_id=", "--reason", "x"], "NAME=VALUE"),
        (["--provider", "github", "--claim", "ref=a", "--claim", "ref=b", "--reason", "x"], "given twice"),
        (["--provider", "github", "--claim", "ref=a", "--for", "soon", "--reason", "x"], "not a duration"),
        (["--provider", "github", "--claim", "ref=a", "--for", "0s", "--reason", "x"], "at least one second"),
        (["--provider", "github", "--claim", "ref=a", "--for", "400d", "--reason", "x"], "366 days"),
        (
            ["--provider", "github", "--claim", "ref=a", "--role", "deploy-prd", "--reason", "x"],
            "not a configured role",
        ),
        (["--provider", "github", "--claim", "ref=a", "--reason", "  "], "--reason must not be empty"),
    ],
)
def test_bad_input_is_a_clear_error_exit_2_and_nothing_is_written(capsys, store_config, args, message):
    _, path = store_config
    code, out, err = cli(capsys, "block", "--config", str(path), *args)
    assert code == 2
    assert message in err
    assert out == ""
    assert stored(path) == {}


def test_the_memory_store_is_refused_with_the_reason(capsys, sandbox, tmp_path):
    config = sandbox.config_dict()
    path = tmp_path / "memory.yaml"
    path.write_text(json.dumps(config))
    (tmp_path / sandbox.key_path.name).write_bytes(sandbox.key_path.read_bytes())
    for argv in (
        ["block", "--provider", "github", "--claim", "repository_id=1", "--reason", "x"],
        ["blocks"],
        ["unblock", "blk-000000000000"],
    ):
        code, out, err = cli(capsys, argv[0], "--config", str(path), *argv[1:])
        assert code == 2 and out == ""
        assert "server.store is memory" in err and "would reach no running broker" in err


def test_for_accepts_the_usual_spellings():
    assert parse_duration("90") == 90
    assert parse_duration("90s") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("2h") == 7200
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("1h30m") == 5400


# -- the audit trail of operators' changes ------------------------------------------------------


def with_audit(path: Path, **audit: str) -> None:
    config = json.loads(path.read_text())
    config["server"]["audit"] = audit
    path.write_text(json.dumps(config))


def block_any_ref(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    return cli(
        capsys, "block", "--config", str(path), "--provider", "github", "--claim", "ref=x", "--reason", "x"
    )


def test_block_and_unblock_write_audit_events_where_the_brokers_go(capsys, store_config, tmp_path):
    _, path = store_config
    with_audit(path, sink="file:audit.log")  # relative to the config's directory, as for serve
    block_id = block(
        capsys, path, "--provider", "github", "--claim", "repository_id=892734123", "--reason", "INC-4711"
    )
    code, _, err = cli(capsys, "unblock", "--config", str(path), block_id)
    assert code == 0, err
    blocked, unblocked = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert blocked["type"] == "block" and blocked["outcome"] == "applied"
    assert blocked["block_id"] == block_id and blocked["provider"] == "github"
    assert blocked["claims"] == {"repository_id": "892734123"} and blocked["reason"] == "INC-4711"
    assert blocked["operator"] and "@" in blocked["operator"]
    assert unblocked["type"] == "unblock" and unblocked["block_id"] == block_id
    assert unblocked["operator"] == blocked["operator"]


def test_with_the_stdout_sink_the_event_goes_to_stderr_and_stdout_stays_the_id(capsys, store_config):
    # The broker's stdout belongs to its own process; scripts read this command's first line.
    _, path = store_config
    code, out, err = block_any_ref(capsys, path)
    assert code == 0, err
    assert out.splitlines()[0].startswith("blk-")
    (event,) = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert event["type"] == "block" and event["block_id"] == out.splitlines()[0]


def test_the_file_serve_audit_log_defaults_to_gets_the_event_too(capsys, store_config, tmp_path, monkeypatch):
    # `serve --audit-log` defaults to $CI_BROKER_AUDIT_LOG: a pod's `kubectl exec` shares it.
    _, path = store_config
    monkeypatch.setenv("CI_BROKER_AUDIT_LOG", str(tmp_path / "from-env.log"))
    code, out, err = block_any_ref(capsys, path)
    assert code == 0, err
    (event,) = [json.loads(line) for line in (tmp_path / "from-env.log").read_text().splitlines()]
    assert event["type"] == "block" and event["block_id"] == out.splitlines()[0]
    assert "{" not in err


def test_the_event_takes_the_configured_format(capsys, store_config, tmp_path):
    _, path = store_config
    with_audit(path, sink="file:audit.cef", format="cef")
    code, out, err = block_any_ref(capsys, path)
    assert code == 0, err
    block_id = out.splitlines()[0]
    (line,) = (tmp_path / "audit.cef").read_text().splitlines()
    assert line.startswith("CEF:0|") and "|block:applied|" in line and block_id in line


def test_a_sink_that_cannot_be_written_is_a_warning_and_the_event_reaches_stderr(
    capsys, store_config, tmp_path
):
    _, path = store_config
    (tmp_path / "not-a-file").mkdir()
    with_audit(path, sink="file:not-a-file")
    code, out, err = block_any_ref(capsys, path)
    assert code == 0, err  # the block is in force: that is what the exit code reports
    assert "warning: the audit event could not be written to file:not-a-file" in err
    assert json.loads(err.splitlines()[-1])["block_id"] == out.splitlines()[0]


# -- enforcement ----------------------------------------------------------------------------------


def test_a_blocked_identity_gets_the_same_403_as_any_refusal_and_the_audit_names_the_block(
    capsys, sandbox, serve_config, store_config, audit_events
):
    config, path = store_config
    app = serve_config(config)
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    block_id = block(
        capsys, path, "--provider", "github", "--claim", "repository_id=892734123", "--reason", "INC-4711"
    )
    synced(app)
    sts_calls = len(sandbox.sts.calls)

    body = assert_refused(sandbox.exchange(sandbox.github_token()), 403, "access_denied")
    assert body["message"] == AccessDenied.MESSAGE
    assert len(sandbox.sts.calls) == sts_calls, "no credentials are minted for a blocked identity"
    exchanges = [e for e in audit_events if e["type"] == "exchange"]
    refusal = last_refusal(exchanges)
    assert refusal["block_id"] == block_id
    assert refusal["reason"] == f"block {block_id}: INC-4711"
    (alert,) = [e for e in audit_events if e["type"] == "alert"]
    assert alert["alert"] == "blocked_identity" and alert["severity"] == "high"
    assert alert["request_id"] == refusal["request_id"]
    assert alert["details"] == {"block_id": block_id}
    assert alert["identity"] == "github:892734123"

    # Another repository is not blocked.
    assert sandbox.exchange(sandbox.github_token(repository_id="1"), role="gcp-deploy").status_code == 403
    assert [e.get("block_id") for e in audit_events if e["type"] == "exchange"][-1] is None


def test_a_blocked_token_is_not_spent(capsys, sandbox, serve_config, store_config):
    config, path = store_config
    app = serve_config(config)
    block_id = block(
        capsys, path, "--provider", "github", "--claim", "repository_id=892734123", "--reason", "x"
    )
    synced(app)
    token = sandbox.github_token()
    assert_refused(sandbox.exchange(token), 403, "access_denied")
    assert cli(capsys, "unblock", "--config", str(path), block_id)[0] == 0
    synced(app)
    assert sandbox.exchange(token).status_code == 200


def test_a_block_on_one_role_leaves_the_others(capsys, sandbox, serve_config, store_config):
    config, path = store_config
    app = serve_config(config)
    block(capsys, path, "--provider", "github", "--claim", "repository_id=892734123", "--role", "deploy-prod",
          "--reason", "x")  # fmt: skip
    synced(app)
    assert_refused(sandbox.exchange(sandbox.github_token()), 403, "access_denied")
    assert sandbox.exchange(sandbox.github_token(), role="gcp-deploy").status_code == 200


def test_every_claim_of_a_block_must_hold(capsys, sandbox, serve_config, store_config):
    config, path = store_config
    app = serve_config(config)
    block(capsys, path, "--provider", "github", "--claim", "repository_id=892734123", "--claim", "actor=mallory",
          "--reason", "x")  # fmt: skip
    synced(app)
    assert sandbox.exchange(sandbox.github_token(actor="octocat")).status_code == 200
    assert_refused(sandbox.exchange(sandbox.github_token(actor="mallory")), 403, "access_denied")


def test_a_block_on_a_case_insensitive_claim_matches_any_spelling(
    capsys, sandbox, serve_config, store_config
):
    config, path = store_config
    app = serve_config(config)
    block(capsys, path, "--provider", "github", "--claim", "repository=Octo-Org/Octo-Repo", "--reason", "x")
    synced(app)
    assert_refused(
        sandbox.exchange(sandbox.github_token(repository="octo-org/OCTO-repo")), 403, "access_denied"
    )


def test_a_block_on_another_provider_does_not_apply(capsys, sandbox, serve_config, store_config):
    config, path = store_config
    app = serve_config(config)
    block(capsys, path, "--provider", "gitlab", "--claim", "ref=refs/heads/main", "--reason", "x")
    synced(app)
    assert sandbox.exchange(sandbox.github_token()).status_code == 200


@pytest.mark.waits
def test_an_expired_block_no_longer_applies(capsys, sandbox, serve_config, store_config):
    config, path = store_config
    app = serve_config(config)
    block(
        capsys,
        path,
        "--provider",
        "github",
        "--claim",
        "repository_id=892734123",
        "--for",
        "2s",
        "--reason",
        "x",
    )
    synced(app)
    assert_refused(sandbox.exchange(sandbox.github_token()), 403, "access_denied")
    time.sleep(2.1)
    assert sandbox.exchange(sandbox.github_token()).status_code == 200  # no write needed
    code, out, _ = cli(capsys, "blocks", "--config", str(path), "--json")
    assert code == 0 and json.loads(out) == []


# -- a record this broker cannot read -------------------------------------------------------------


def newer_record(block_id: str) -> str:
    return json.dumps(
        {"v": 1, "id": block_id, "provider": "github", "claims": {"repository_id": "892734123"}, "role": None,
         "reason": "from a newer broker", "created_at": time.time(), "expires_at": None, "created_by": None,
         "claims_glob": {"ref": "refs/heads/*"}}
    )  # fmt: skip


def test_a_block_with_fields_this_broker_does_not_know_is_refused_loudly_never_ignored(
    capsys, sandbox, serve_config, store_config, audit_events, caplog
):
    config, path = store_config
    app = serve_config(config)
    db = config["server"]["replay_store"][len("sqlite:///") :]
    store = SqliteBlockStore(db)
    store.add("blk-0123456789ab", newer_record("blk-0123456789ab"), [])
    synced(app)
    # The broker cannot tell whom it blocks: every exchange fails closed, whoever asks.
    assert_refused(
        sandbox.exchange(sandbox.github_token(repository_id="1")), 403, "access_denied"
    )  # policy first
    assert_refused(sandbox.exchange(sandbox.github_token()), 503, "unavailable")
    assert "claims_glob" in last_refusal(audit_events)["reason"]
    assert any("claims_glob" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    code, out, err = cli(capsys, "blocks", "--config", str(path))
    assert code == 2 and "claims_glob" in err and "newer" in err
    # A newer format version is refused the same way.
    store.remove("blk-0123456789ab")
    record = json.loads(newer_record("blk-0123456789ac"))
    del record["claims_glob"]
    record["v"] = 2
    store.add("blk-0123456789ac", json.dumps(record), [])
    synced(app)
    assert_refused(sandbox.exchange(sandbox.github_token()), 503, "unavailable")
    # `unblock` removes what it cannot read; service returns.
    assert cli(capsys, "unblock", "--config", str(path), "blk-0123456789ac")[0] == 0
    synced(app)
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    store.close()


# -- staleness ------------------------------------------------------------------------------------


def test_a_copy_older_than_the_bound_fails_closed(sandbox, tmp_path, store_config):
    config_dict, _ = store_config
    config = build_config(config_dict, base_dir=tmp_path)
    store = SqliteBlockStore(str(tmp_path / "state.db"))
    blocks = BlockList(config, store, max_staleness=0.3)
    blocks.poll()  # fresh, and never polled again: no thread started
    provider = config.providers["github"]
    claims = {"repository_id": "1"}
    blocks.refuse_if_blocked(provider, claims, "deploy-prod")  # not blocked, and fresh
    time.sleep(0.35)
    with pytest.raises(Exception) as info:
        blocks.refuse_if_blocked(provider, claims, "deploy-prod")
    assert info.value.__class__.__name__ == "Unavailable"
    assert "not synchronised" in info.value.reason
    blocks.poll()
    blocks.refuse_if_blocked(provider, claims, "deploy-prod")
    blocks.close()


# -- a store that lost everything -----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    yield from redis_server_fixture(tmp_path_factory)


def test_a_store_emptied_and_written_again_is_reloaded_not_mistaken_for_the_old_one(
    redis_server, sandbox, caplog
):
    # A redis restart without persistence, then as many writes as before: the counter alone would
    # repeat the version this worker read, and it would keep enforcing the lost block, not the new.
    config = build_config(sandbox.config_dict(), base_dir=sandbox.workdir)
    provider = config.providers["github"]
    store = RedisBlockStore(redis_server.url)
    old = new_block(
        config, provider="github", claims=["repository_id=1"], role=None, reason="old", duration=None
    )
    store.add(old.id, old.record(), [])
    blocks = BlockList(config, RedisBlockStore(redis_server.url))
    blocks.poll()
    with pytest.raises(Blocked):
        blocks.refuse_if_blocked(provider, {"repository_id": "1"}, "deploy-prod")
    version = store.version()
    redis_server.flush()
    new = new_block(
        config, provider="github", claims=["repository_id=2"], role=None, reason="new", duration=None
    )
    store.add(new.id, new.record(), [])
    assert store.version().split(":")[1] == version.split(":")[1], "the counter alone repeats"
    blocks.poll()
    blocks.refuse_if_blocked(provider, {"repository_id": "1"}, "deploy-prod")
    with pytest.raises(Blocked):
        blocks.refuse_if_blocked(provider, {"repository_id": "2"}, "deploy-prod")
    assert any("emptied" in r.getMessage() for r in caplog.records)
    blocks.close()
    store.close()
