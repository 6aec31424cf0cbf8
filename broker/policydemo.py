"""The demo's last step: a policy change reviewed before it merges (`ci-broker diff`).

The demo's own policy grants its AWS role to one repository's `main` branch. The change widens
that to every branch; `diff` shows exactly who gains the role, and the example it prints is
checked against the running demo broker's policy (refused) and the changed one (granted).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.demo import Demo

WIDENED = {"glob": "refs/heads/*"}


def widened_policy(config: dict[str, Any], role: str) -> dict[str, Any]:
    """`config` with each of `role`'s rules on `refs/heads/main` widened to every branch."""
    changed = copy.deepcopy(config)
    for rule in changed["roles"][role]["allow"]:
        if rule["claims"].get("ref") == "refs/heads/main":
            rule["claims"]["ref"] = WIDENED
    return changed


def step_policy_diff(demo: Demo, step: str, role: str) -> None:
    from broker import diffreport
    from broker.policydiff import allowed, diff_configs
    from broker.policyload import load_policy

    demo.heading(step, "A pull request widens the policy: `ci-broker diff` shows who gains what")
    import yaml

    old_data = demo.demo_config()
    new_data = widened_policy(old_data, role)
    old_file, new_file = Path(demo.workdir, "policy-before.yaml"), Path(demo.workdir, "policy-after.yaml")
    old_file.write_text(yaml.safe_dump(old_data, sort_keys=False))
    new_file.write_text(yaml.safe_dump(new_data, sort_keys=False))
    widened = new_data != old_data
    if widened:
        demo.say(f"The change: roles.{role}: ref refs/heads/main -> glob refs/heads/*", 3)
    else:
        demo.say(f"roles.{role} has no rule on refs/heads/main to widen: the files are the same", 3)
    demo.say(f"$ ci-broker diff {old_file.name} {new_file.name}", 3)
    old, new = load_policy(old_file, name=old_file.name), load_policy(new_file, name=new_file.name)
    result = diff_configs(old, new)
    demo.say(diffreport.render(result, "text"), 5)
    gained = result.roles[role].gained
    demo.expect(
        len(gained) == (1 if widened else 0) and not result.roles[role].lost,
        f"one set of identities gains {role} and none loses it"
        if widened
        else "an unchanged policy gains and loses nothing",
    )
    if gained:
        example = gained[0].example
        was = allowed(demo.config, role, gained[0].issuer, example)
        now = allowed(new, role, gained[0].issuer, example)
        demo.expect(
            not was and now,
            "its example is refused by the running broker's policy and granted by the changed one",
            f"running policy {'grants' if was else 'refuses'}, changed policy {'grants' if now else 'refuses'}",
        )
    demo.say("The PR check (actions/policy-check, the GitLab policy-check job) posts this as markdown.", 3)
