"""Run the JavaScript Action (actions/credentials) directly with node, as the runner runs it.

The runner hands a node action its inputs as INPUT_<NAME> variables and its environment files
(GITHUB_ENV, GITHUB_OUTPUT, GITHUB_STATE) by path; a post step gets the saved state back as
STATE_<name>. `run_action` does the same in a temporary directory and reads the files back, so a
test sees what the following steps would. act (test_github_action.py) runs the real runner.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from clientrun import Result, parse_file_command
from support import ACTION_DIR, require_tool

# Every input with its default in action.yml: the runner passes each one, given or not.
INPUTS = {
    "broker-url": "",
    "role": "",
    "audience": "",
    "duration": "",
    "export-env": "true",
    "output-credentials": "false",
    "refresh": "false",
    "aws-profile": "",
    "allowed-account-ids": "",
}


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without anything that could steer the action or the SDKs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                "CI_BROKER_",
                "GITHUB_",
                "ACTIONS_",
                "AWS_",
                "AZURE_",
                "ARM_",
                "GOOGLE_",
                "CLOUDSDK_",
                "INPUT_",
                "STATE_",
            )
        )
    }
    env.update(extra or {})
    return env


def runner_dirs(tmp: Path) -> dict[str, Path]:
    runner = tmp / "runner"
    (runner / "temp").mkdir(parents=True, exist_ok=True)
    files = {name: runner / name.lower() for name in ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_STATE")}
    for path in files.values():
        if not path.exists():
            path.write_text("")
    return {**files, "RUNNER_TEMP": runner / "temp"}


def run_action(
    tmp: Path, inputs: dict[str, str], env: dict[str, str] | None = None, timeout: int = 60
) -> Result:
    """The main step: `node main.js` with these inputs (names as in action.yml)."""
    dirs = runner_dirs(tmp)
    full = job_env({"GITHUB_ACTIONS": "true", **{k: str(v) for k, v in dirs.items()}, **(env or {})})
    for name, default in INPUTS.items():
        full[f"INPUT_{name.upper()}"] = inputs.get(name, default)
    proc = subprocess.run(
        [require_tool("node"), str(ACTION_DIR / "main.js")],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    raw_env = dirs["GITHUB_ENV"].read_text()
    return Result(
        proc.returncode,
        proc.stdout,
        proc.stderr,
        parse_file_command(raw_env),
        parse_file_command(dirs["GITHUB_OUTPUT"].read_text()),
        parse_file_command(dirs["GITHUB_STATE"].read_text()),
        raw_env,
    )


def run_post(tmp: Path, state: dict[str, str], timeout: int = 60) -> Result:
    """The post step, with the state the main step saved; `env` is what it writes to GITHUB_ENV."""
    dirs = runner_dirs(tmp)
    post_env = tmp / "runner" / "github_env_post"
    post_env.write_text("")
    full = job_env(
        {
            "RUNNER_TEMP": str(dirs["RUNNER_TEMP"]),
            "GITHUB_ENV": str(post_env),
            **{f"STATE_{k}": v for k, v in state.items()},
        }
    )
    proc = subprocess.run(
        [require_tool("node"), str(ACTION_DIR / "post.js")],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, parse_file_command(post_env.read_text()))
