"""Run the shared client (actions/credentials/ci-broker.sh) directly, as each pipeline does.

- GitHub: executed as a script with CI_BROKER_TARGET=github and the runner's file commands
  (GITHUB_ENV, GITHUB_OUTPUT, GITHUB_STATE) pointing into a temporary directory.
- GitLab: its text inlined into the job's shell (here: sourced under `set -eu`, which is stricter
  than GitLab's `set -e`), after which the harness records the job's environment.

The shells and HTTP tools are chosen per test so the same client is run the way each image
would run it: dash + curl (ubuntu, debian + curl), bash + python3, dash + GNU wget, and busybox
ash + busybox wget with nothing else on PATH (alpine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from support import CLIENT, require_tool

# The applets a minimal alpine image offers the client (busybox provides all of them).
BUSYBOX_APPLETS = [
    "sh",
    "awk",
    "sed",
    "tr",
    "cut",
    "od",
    "mktemp",
    "rm",
    "mkdir",
    "grep",
    "sleep",
    "timeout",
    "cat",
    "env",
    "wget",
    "printf",
    "head",
    # what the refresh hooks use besides (contract section 8)
    "chmod",
    "mv",
    "cp",
    "date",
    "base64",
]


def busybox_bin(root: Path, without: tuple[str, ...] = ()) -> Path:
    """A directory of busybox applets only: PATH for an alpine-like job."""
    busybox = require_tool("busybox")
    bindir = root / ("busybox-bin-" + "-".join(without) if without else "busybox-bin")
    if not bindir.exists():
        bindir.mkdir(parents=True)
        for applet in BUSYBOX_APPLETS:
            if applet not in without:
                (bindir / applet).symlink_to(busybox)
    return bindir


@dataclass(frozen=True)
class Flavor:
    """One (shell, HTTP tool) pair, as a job image would have them."""

    name: str
    shell: str  # "dash", "bash" or "busybox"
    tools: str  # CI_BROKER_HTTP_TOOLS

    def command(self, tmp: Path) -> tuple[list[str], dict[str, str]]:
        if self.shell == "busybox":
            bindir = busybox_bin(tmp)
            return [str(bindir / "sh")], {"PATH": str(bindir)}
        return [require_tool(self.shell)], {}


FLAVORS = [
    Flavor("dash-curl", "dash", "curl"),
    Flavor("bash-python3", "bash", "python3"),
    Flavor("dash-gnu-wget", "dash", "wget"),
    Flavor("busybox-alpine", "busybox", "curl python3 wget"),
]


def parse_file_command(text: str) -> dict[str, str]:
    """Read GITHUB_ENV / GITHUB_OUTPUT content: `NAME<<DELIM` blocks (the client's only form)."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        name, sep, delimiter = line.partition("<<")
        assert sep and delimiter.startswith("ghadelimiter_"), f"not delimiter syntax: {line!r}"
        end = lines.index(delimiter, i + 1)
        values[name] = "\n".join(lines[i + 1 : end])
        i = end + 1
    return values


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    env: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    raw_env_file: str = ""

    @property
    def log(self) -> str:
        return self.stdout + self.stderr

    def masked(self) -> list[str]:
        return [
            line[len("::add-mask::") :].replace("%25", "%")
            for line in self.stdout.splitlines()
            if line.startswith("::add-mask::")
        ]


def _base_env(extra: dict[str, str]) -> dict[str, str]:
    # Nothing from the developer's or CI's environment may steer the client.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CI_BROKER_", "GITHUB_", "ACTIONS_", "AWS_", "AZURE_", "ARM_"))
    }
    env.update(extra)
    return env


def run_github(tmp: Path, flavor: Flavor, env: dict[str, str], timeout: int = 60) -> Result:
    runner = tmp / "runner"
    runner.mkdir(parents=True, exist_ok=True)
    files = {name: runner / name.lower() for name in ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_STATE")}
    for path in files.values():
        path.write_text("")
    argv, shell_env = flavor.command(tmp)
    full = _base_env(
        {
            "CI_BROKER_TARGET": "github",
            "CI_BROKER_HTTP_TOOLS": flavor.tools,
            "RUNNER_TEMP": str(runner / "temp"),
            "GITHUB_ACTIONS": "true",
            **{k: str(v) for k, v in files.items()},
            **shell_env,
            **env,
        }
    )
    (runner / "temp").mkdir(exist_ok=True)
    proc = subprocess.run(
        [*argv, str(CLIENT)],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    raw_env = files["GITHUB_ENV"].read_text()
    return Result(
        proc.returncode,
        proc.stdout,
        proc.stderr,
        parse_file_command(raw_env),
        parse_file_command(files["GITHUB_OUTPUT"].read_text()),
        parse_file_command(files["GITHUB_STATE"].read_text()),
        raw_env,
    )


ENV_MARK = "----- job environment -----"


def run_gitlab(
    tmp: Path,
    flavor: Flavor,
    env: dict[str, str],
    prologue: str = "set -eu",
    epilogue: str = "",
    via_stdin: bool = False,
    timeout: int = 60,
) -> Result:
    """Inline the client into a job-like shell, then print the job's environment after a mark."""
    argv, shell_env = flavor.command(tmp)
    project = tmp / "project"
    project.mkdir(parents=True, exist_ok=True)
    script = "\n".join([prologue, CLIENT.read_text(), epilogue, f"echo '{ENV_MARK}'", "env", ""])
    full = _base_env(
        {
            "CI_BROKER_HTTP_TOOLS": flavor.tools,
            "CI_PROJECT_DIR": str(project),
            "GITLAB_CI": "true",
            **shell_env,
            **env,
        }
    )
    if via_stdin:
        # How GitLab's docker executor feeds the job: the script arrives on the shell's stdin,
        # so a command that read stdin would swallow the rest of the job.
        proc = subprocess.run(argv, input=script, env=full, capture_output=True, text=True, timeout=timeout)
    else:
        proc = subprocess.run(
            [*argv, "-c", script],
            env=full,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    before, _, after = proc.stdout.partition(ENV_MARK + "\n")
    job_env = dict(line.split("=", 1) for line in after.splitlines() if "=" in line)
    return Result(proc.returncode, before, proc.stderr, job_env)


def stub_tool(bindir: Path, name: str, body: str) -> Path:
    """A fake command on PATH (for behaviour no real tool here can show, e.g. busybox TLS)."""
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def which_all(*names: str) -> bool:
    return all(shutil.which(n) for n in names)
