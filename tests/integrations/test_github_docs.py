"""What the docs promise GitHub users, checked against the Action (issue 20, items 3 and 10): the
examples use actions that still run on hosted runners, the runner version node24 needs is stated,
and every configure-aws-credentials name the migration table claims is a real output or input.
"""

from __future__ import annotations

import re

import yaml
from support import ACTION_DIR, ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The first major of each action that runs on node24 (node20 is gone from hosted runners).
NODE24_SINCE = {
    "actions/checkout": 5,
    "actions/setup-node": 5,
    "google-github-actions/auth": 3,
    "google-github-actions/setup-gcloud": 3,
}


def test_examples_use_actions_that_run_on_node24() -> None:
    found = 0
    for doc in DOCS:
        for action, major in re.findall(r"uses:\s*([\w.-]+/[\w.-]+)@v(\d+)", doc.read_text()):
            if action in NODE24_SINCE:
                found += 1
                assert int(major) >= NODE24_SINCE[action], f"{doc.name}: {action}@v{major} runs on node20"
    assert found, "the docs' examples use no well-known action at all: the check lost its subject"


def test_the_docs_state_the_runner_version_node24_needs() -> None:
    action = yaml.safe_load((ACTION_DIR / "action.yml").read_text())
    assert action["runs"]["using"] == "node24"
    text = (ROOT / "docs" / "pipelines.md").read_text()
    assert "Actions runner 2.327.1 or newer" in text


def test_the_migration_table_names_only_real_outputs_and_inputs() -> None:
    action = yaml.safe_load((ACTION_DIR / "action.yml").read_text())
    text = (ROOT / "docs" / "pipelines.md").read_text()
    table = text.split("**aws-actions/configure-aws-credentials**", 1)[1].split(
        "**google-github-actions/auth**"
    )[0]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ")]
    # Names our column gives, and configure-aws-credentials' names on rows that say "the same".
    kept = " ".join(
        (left if "the same" in right else "") + right
        for left, right in rows
        if not right.strip().startswith("not provided")
    )
    claimed = set(
        re.findall(r"`(aws-[a-z-]+|authenticated-arn|allowed-account-ids|output-credentials)`", kept)
    )
    assert {"aws-account-id", "aws-access-key-id", "authenticated-arn", "allowed-account-ids"} <= claimed
    for name in claimed:
        assert name in action["outputs"] or name in action["inputs"], name
    assert "minus the `aws-` prefix" not in text
