"""The demo's policy-diff step (`broker.policydemo`), on a recording stand-in for the demo's
narration: the widened branch is reported as gained, and its example is checked both ways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policy_helpers import build, policy, rule

from broker.config import Config
from broker.policydemo import step_policy_diff, widened_policy

MAIN = {"repository_id": "1", "ref": "refs/heads/main", "event_name": "push"}


class Narration:
    """What `step_policy_diff` uses of `broker.demo.Demo`: its config, its workdir, its output."""

    def __init__(self, data: dict[str, Any], config: Config, workdir: Path) -> None:
        self.data, self.config, self.workdir = data, config, workdir
        self.lines: list[str] = []
        self.checks: list[tuple[str, bool]] = []

    def demo_config(self) -> dict[str, Any]:
        return self.data

    def heading(self, step: str, title: str) -> None:
        self.lines.append(f"{step}. {title}")

    def say(self, text: str = "", indent: int = 0) -> None:
        self.lines.extend(text.split("\n"))

    def expect(self, ok: bool, expectation: str, observed: str = "") -> bool:
        self.checks.append((expectation, ok))
        return ok


def run_step(tmp_path: Path, key_file: Path, data: dict[str, Any]) -> Narration:
    narration = Narration(data, build(data, key_file), tmp_path)
    step_policy_diff(narration, "11", "deploy")  # type: ignore[arg-type]
    return narration


def test_widening_main_to_every_branch_is_shown_as_gained_with_a_checked_example(tmp_path, key_file):
    narration = run_step(tmp_path, key_file, policy({"deploy": [rule(**MAIN)]}))
    assert narration.checks == [
        ("one set of identities gains deploy and none loses it", True),
        ("its example is refused by the running broker's policy and granted by the changed one", True),
    ]
    output = "\n".join(narration.lines)
    assert (
        'GAINED for provider github: event_name: "push"; ref: glob "refs/heads/*" and not "refs/heads/main"'
        in output
    )
    assert "$ ci-broker diff policy-before.yaml policy-after.yaml" in output


def test_a_policy_with_nothing_to_widen_differs_in_nothing(tmp_path, key_file):
    data = policy({"deploy": [rule(**{**MAIN, "ref": {"glob": "refs/heads/*"}})]})
    assert widened_policy(data, "deploy") == data
    narration = run_step(tmp_path, key_file, data)
    assert narration.checks == [("an unchanged policy gains and loses nothing", True)]
