"""`ci-broker diff` output: text for a terminal, markdown for a PR comment or job summary, JSON
for tools (contract section 10).

A claim's set is shown as the config's own condition forms: a value, a list (any of), `glob`,
`regex`, and two combinations the config has no need for: `{"all": [...]}` (every one holds) and
`{"not": X}` (X does not hold, which includes the claim being absent).
"""

from __future__ import annotations

import json
from typing import Any

from broker.policydiff import Difference, PolicyDiff, RoleDiff

FORMATS = ("text", "json", "markdown")


def render(result: PolicyDiff, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result.to_json(), indent=2, ensure_ascii=False)
    if fmt == "markdown":
        return markdown(result)
    return text(result)


def describe(form: Any) -> str:
    """A condition form in words: `"main"`, `any of [...]`, `glob "..."`, `not (...)`, `... and ...`."""
    if isinstance(form, str):
        return json.dumps(form, ensure_ascii=False)
    if isinstance(form, list):
        return "any of [" + ", ".join(json.dumps(v, ensure_ascii=False) for v in form) + "]"
    ((kind, value),) = form.items()
    if kind == "all":
        return " and ".join(_grouped(part) for part in value)
    if kind == "not":
        return f"not {_grouped(value)}"
    return f"{kind} {json.dumps(value, ensure_ascii=False)}"


def _grouped(form: Any) -> str:
    words = describe(form)
    return f"({words})" if isinstance(form, dict) and "all" in form else words


def _status(role: RoleDiff) -> str:
    if not role.in_old:
        return "new role"
    if not role.in_new:
        return "removed role"
    return "changed"


def _conditions_line(difference: Difference) -> str:
    if not difference.conditions:
        return "any token"
    return "; ".join(f"{claim}: {describe(form)}" for claim, form in difference.conditions.items())


def _example(difference: Difference) -> str:
    return json.dumps(difference.example, ensure_ascii=False, sort_keys=True)


def _counts(result: PolicyDiff) -> tuple[list[RoleDiff], int]:
    changed = [r for r in result.roles.values() if r.changed]
    return changed, len(result.roles) - len(changed)


def text(result: PolicyDiff) -> str:
    changed, unchanged = _counts(result)
    lines = [f"ci-broker diff {result.old_file} -> {result.new_file}"]
    if not changed:
        lines.append(f"no access changes ({unchanged} role(s) grant exactly what they did)")
        return "\n".join(lines)
    for role in changed:
        lines.append("")
        lines.append(f"role {role.name} ({_status(role)})")
        for label, differences in (("GAINED", role.gained), ("lost", role.lost)):
            for difference in differences:
                lines.append(f"  {label} for provider {difference.provider}: {_conditions_line(difference)}")
                lines.append(f"    example: {_example(difference)}")
    lines.append("")
    gained = sum(len(r.gained) for r in changed)
    lost = sum(len(r.lost) for r in changed)
    lines.append(
        f"{len(changed)} role(s) changed ({gained} gained set(s), {lost} lost set(s)); {unchanged} unchanged"
    )
    return "\n".join(lines)


# Every character markdown or HTML could read as markup. A pull request's author writes the
# patterns, and the job summary must show them, never let them hide a row (`<!--`) or fake one.
_MARKUP = frozenset("\\`*_[]|~#!{}()+-.")


def _cell(value: str) -> str:
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    value = "".join("\\" + c if c in _MARKUP else c for c in value)
    return value.replace("\r", "\\r").replace("\n", "\\n")


def markdown(result: PolicyDiff) -> str:
    changed, unchanged = _counts(result)
    lines = ["## ci-broker policy diff", ""]
    if not changed:
        lines.append(f"No access changes: {unchanged} role(s) grant exactly what they did.")
        return "\n".join(lines) + "\n"
    gained = sum(len(r.gained) for r in changed)
    lost = sum(len(r.lost) for r in changed)
    headline = "**Access gained**" if gained else "No access gained"
    lines.append(
        f"{headline}: {len(changed)} role(s) changed, {gained} gained set(s), {lost} lost set(s); "
        f"{unchanged} role(s) unchanged. Each row is exact (not sampled); its example claims set is "
        "decided differently by the two configs."
    )
    for role in changed:
        lines += ["", f"### `{role.name}` ({_status(role)})", ""]
        lines.append("| | provider | identities | example claims |")
        lines.append("|---|---|---|---|")
        for label, differences in (("**gained**", role.gained), ("lost", role.lost)):
            for difference in differences:
                lines.append(
                    f"| {label} | `{difference.provider}` | {_cell(_conditions_line(difference))} "
                    f"| {_cell(_example(difference))} |"
                )
    return "\n".join(lines) + "\n"
