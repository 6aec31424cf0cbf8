"""`ci-broker discovery` (static issuer documents) and `ci-broker keys` (rotation without a failed
exchange)."""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from broker.cli import main
from broker.keyrotation import plan
from broker.keys import load_signing_key, write_private_key


def write_config(sandbox: Any, keys: list[Path], name: str = "broker.yaml") -> Path:
    config = copy.deepcopy(sandbox.config_dict())
    config["server"]["signing_keys"] = [str(k) for k in keys]
    path = sandbox.workdir / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def two_keys(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old.pem", tmp_path / "new.pem"
    write_private_key(old, "ES256")
    write_private_key(new, "ES256")
    return old, new


def serve_keys(sandbox: Any, serve_config: Any, keys: list[Path]) -> None:
    config = copy.deepcopy(sandbox.config_dict())
    config["server"]["signing_keys"] = [str(k) for k in keys]
    serve_config(config)


# -- discovery ------------------------------------------------------------------------------------


def test_discovery_writes_exactly_what_the_running_broker_serves(sandbox, broker, tmp_path, capsys):
    config = write_config(sandbox, [sandbox.key_path])
    out = tmp_path / "site"
    assert main(["discovery", "--config", str(config), "--out", str(out)]) == 0
    for relative in (".well-known/openid-configuration", ".well-known/jwks.json"):
        written = json.loads((out / relative).read_text())
        assert written == requests.get(f"{sandbox.broker_url}/{relative}", timeout=10).json()
        assert stat.S_IMODE((out / relative).stat().st_mode) == 0o644
    assert "application/json" in capsys.readouterr().out


def test_the_written_jwks_holds_public_keys_only(sandbox, tmp_path, two_keys):
    config = write_config(sandbox, list(two_keys))
    assert main(["discovery", "--config", str(config), "--out", str(tmp_path / "site")]) == 0
    jwks = json.loads((tmp_path / "site/.well-known/jwks.json").read_text())
    assert [k["kid"] for k in jwks["keys"]] == [load_signing_key(p).kid for p in two_keys]
    for key in jwks["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)
        assert key["use"] == "sig" and key["alg"] == "ES256"


def test_discovery_refuses_an_invalid_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {}\n")
    assert main(["discovery", "--config", str(bad), "--out", str(tmp_path / "site")]) == 2
    assert not (tmp_path / "site").exists()


# -- the rotation plan ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "deployed, live, step, safe",
    [
        (["A"], ["A"], "in-sync", True),
        (["A", "B"], ["A"], "publish", True),  # 1. the new key published second
        (["B", "A"], ["A", "B"], "promote", True),  # 2. promoted once the clouds have seen it
        (["B"], ["B", "A"], "retire", True),  # 3. the old key retired
        (["B", "A"], ["A"], "unsafe", False),  # signing with a key nobody has seen yet
        (["B"], ["A"], "unsafe", False),  # swapping keys in one step
        (["A"], ["B", "A"], "unsafe", False),  # unpublishing the key that signs now
        (["B"], [], "first-deploy", True),
    ],
)
def test_the_plan_names_the_step_and_refuses_the_two_unsafe_moves(deployed, live, step, safe):
    result = plan(deployed, live)
    assert (result.step, result.safe) == (step, safe), result.lines


def test_keys_check_walks_a_rotation_against_the_live_broker(sandbox, serve_config, two_keys, capsys):
    old, new = two_keys
    old_kid, new_kid = load_signing_key(old).kid, load_signing_key(new).kid

    def check(keys: list[Path]) -> tuple[int, str]:
        code = main(["keys", "check", "--config", str(write_config(sandbox, keys, "next.yaml"))])
        return code, capsys.readouterr().out

    serve_keys(sandbox, serve_config, [old])
    code, out = check([new])
    assert code == 1 and "unsafe" in out
    code, out = check([old, new])
    assert (
        code == 0
        and "step: publish" in out
        and f"live JWKS {sandbox.broker_url}/.well-known/jwks.json: {old_kid}" in out
    )

    serve_keys(sandbox, serve_config, [old, new])
    code, out = check([new, old])
    assert code == 0 and "step: promote" in out

    serve_keys(sandbox, serve_config, [new, old])
    assert sandbox.exchange(sandbox.github_token()).status_code == 200  # signed by the new key
    assert sandbox.sts.accepted[-1]  # the local STS verified it against the published JWKS
    code, out = check([new])
    assert code == 0 and "step: retire" in out and old_kid in out
    code, out = check([old])
    assert code == 1 and new_kid in out


def test_keys_check_fails_cleanly_when_the_live_jwks_cannot_be_read(sandbox, two_keys, capsys):
    config = write_config(sandbox, [two_keys[0]])
    assert main(["keys", "check", "--config", str(config), "--jwks-url", "http://127.0.0.1:9/jwks.json"]) == 2
    assert "cannot read the live JWKS" in capsys.readouterr().err


def test_keys_rotate_writes_a_private_new_key_and_prints_the_three_steps(sandbox, tmp_path, capsys):
    config = write_config(sandbox, [sandbox.key_path])
    new = tmp_path / "broker-2.pem"
    assert main(["keys", "rotate", "--config", str(config), "--new-key", str(new)]) == 0
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    out = capsys.readouterr().out
    assert load_signing_key(new).kid in out
    for word in ("1. publish", "2. promote", "3. retire", "SECOND", "FIRST"):
        assert word in out
    assert main(["keys", "rotate", "--config", str(config), "--new-key", str(new)]) == 2  # no overwrite


def test_keys_check_refuses_a_discovery_document_that_is_not_an_object():
    import pytest
    from werkzeug.wrappers import Response

    from broker.keyrotation import live_jwks_url
    from broker.sandbox.wsgi import LocalServer

    with LocalServer(Response("[]", mimetype="application/json")) as server:
        with pytest.raises(ValueError, match="not a JSON object"):
            live_jwks_url(server.url)


def test_the_written_files_are_byte_for_byte_what_the_broker_serves(sandbox, broker, tmp_path):
    import requests

    from broker.discovery import DISCOVERY_PATH, JWKS_PATH, write_documents

    write_documents(broker.extensions["broker"].config.server, tmp_path)
    for path in (DISCOVERY_PATH, JWKS_PATH):
        served = requests.get(f"{sandbox.broker_url}/{path}", timeout=5).content
        assert served == (tmp_path / path).read_bytes()
