"""The lock files (requirements/*.txt, made by `make lock`) agree with pyproject.toml.

CI and the Docker image install only from the locks, with hashes. A dependency added to
pyproject.toml without `make lock` would be missing there (or pinned outside its new range) and
the failure would surface far from its cause; these tests name it and the command that fixes it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
TEST_LOCK = ROOT / "requirements" / "test.txt"
# The extras the test lock holds besides the runtime set (the Makefile's LOCK_TEST_EXTRAS).
TEST_EXTRAS = ("test", "dev")
FIX = "run `make lock` and commit requirements/"


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: str
    hashes: tuple[str, ...]


def read_lock(path: Path) -> list[Pin]:
    """Each `name==version [; marker] \\` entry with the `--hash=` lines that follow it."""
    pins: list[Pin] = []
    entry = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?$")
    for line in path.read_text().splitlines():
        if match := entry.match(line):
            name, version, marker = match.groups()
            pins.append(Pin(canonicalize_name(name), version, marker or "", ()))
        elif (digest := line.strip().removeprefix("--hash=")) != line.strip() and pins:
            last = pins[-1]
            pins[-1] = Pin(last.name, last.version, last.marker, (*last.hashes, digest.rstrip(" \\")))
        else:
            assert not line.strip() or line.lstrip().startswith("#"), f"{path.name}: unexpected line {line!r}"
    return pins


def requirements(*groups: Iterable[str]) -> list[Requirement]:
    return [Requirement(spec) for group in groups for spec in group]


def extra_requirements(extras: Iterable[str]) -> list[Requirement]:
    """An extra's requirements, with one that names the project itself (`ci-broker[demo]` inside
    `test`) replaced by the requirements of the extras it names: the lock holds those, not the
    project."""
    project = canonicalize_name(PYPROJECT["project"]["name"])
    found: list[Requirement] = []
    for extra in extras:
        for requirement in requirements(PYPROJECT["project"]["optional-dependencies"][extra]):
            if canonicalize_name(requirement.name) == project:
                found += extra_requirements(sorted(requirement.extras))
            else:
                found.append(requirement)
    return found


RUNTIME = requirements(PYPROJECT["project"]["dependencies"], PYPROJECT["build-system"]["requires"])
EXTRAS = extra_requirements(TEST_EXTRAS)


def unmet(lock: list[Pin], wanted: list[Requirement]) -> list[str]:
    pinned: dict[str, list[str]] = {}
    for pin in lock:
        pinned.setdefault(pin.name, []).append(pin.version)
    problems = []
    for requirement in wanted:
        versions = pinned.get(canonicalize_name(requirement.name))
        if not versions:
            problems.append(f"{requirement} is not in the lock")
        for version in versions or ():
            if not requirement.specifier.contains(version, prereleases=True):
                problems.append(f"{requirement} but the lock pins {version}")
    return problems


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, TEST_LOCK], ids=["runtime", "test"])
def test_every_pin_is_exact_and_hashed(lock):
    pins = read_lock(lock)
    assert pins, f"{lock} holds no pins"
    unhashed = [p.name for p in pins if not p.hashes or not all(h.startswith("sha256:") for h in p.hashes)]
    assert not unhashed, f"{lock.name}: pinned without sha256 hashes: {unhashed}; {FIX}"


def test_the_runtime_lock_has_every_runtime_dependency_within_its_range():
    assert not unmet(read_lock(RUNTIME_LOCK), RUNTIME), FIX


def test_the_test_lock_has_every_dependency_of_the_runtime_and_test_sets():
    assert not unmet(read_lock(TEST_LOCK), RUNTIME + EXTRAS), FIX


def test_the_image_ships_exactly_what_ci_tested():
    """Every runtime pin is the test lock's pin, version and hashes alike."""
    tested = {(p.name, p.marker): p for p in read_lock(TEST_LOCK)}
    differ = [p for p in read_lock(RUNTIME_LOCK) if tested.get((p.name, p.marker)) != p]
    assert not differ, (
        f"runtime pins not as in the test lock: {[f'{p.name}=={p.version}' for p in differ]}; {FIX}"
    )


def test_the_runtime_lock_carries_no_test_or_dev_tool():
    runtime = {p.name for p in read_lock(RUNTIME_LOCK)}
    tools = {canonicalize_name(r.name) for r in EXTRAS} - {canonicalize_name(r.name) for r in RUNTIME}
    assert not runtime & tools, f"test/dev packages in the image's lock: {sorted(runtime & tools)}"
