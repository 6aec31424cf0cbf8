#!/usr/bin/env python3
"""Copy the shared scripts into the GitLab templates: the client (actions/credentials/ci-broker.sh)
and the policy check (actions/policy-check/policy-check.sh).

A GitLab `include:` brings one YAML file and nothing beside it, so the template must carry the
script's text itself; the GitHub Action runs the file. This keeps the two byte-for-byte equal:
`embed-client.py` rewrites the block between the script's first and last line (its `# >>>` and
`# <<<` markers) in each template; `embed-client.py --check` fails if any template is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "actions" / "credentials" / "ci-broker.sh"
TEMPLATES = [
    ROOT / "gitlab-templates" / "ci-broker.gitlab-ci.yml",
    ROOT / "gitlab-templates" / "templates" / "ci-broker.yml",
]
START, END = "# >>> ci-broker client", "# <<< ci-broker client"
POLICY_CHECK = ROOT / "actions" / "policy-check" / "policy-check.sh"
POLICY_TEMPLATES = [ROOT / "gitlab-templates" / "policy-check.gitlab-ci.yml"]
POLICY_START, POLICY_END = "# >>> ci-broker policy check", "# <<< ci-broker policy check"
# (script, templates carrying it, its first line's start, its last line's start)
EMBEDDED = [(CLIENT, TEMPLATES, START, END), (POLICY_CHECK, POLICY_TEMPLATES, POLICY_START, POLICY_END)]


def embedded(template: str, client: str, start: str = START, end: str = END) -> str:
    lines = template.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith(start)]
    ends = [i for i, line in enumerate(lines) if line.lstrip().startswith(end)]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise SystemExit(f"expected one '{start}' ... '{end}' block")
    first, last = starts[0], ends[0]
    indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
    block = [(indent + line if line.strip() else "") + "\n" for line in client.splitlines()]
    return "".join(lines[:first] + block + lines[last + 1 :])


def main(argv: list[str]) -> int:
    check = argv[1:] == ["--check"]
    stale = []
    for script, templates, start, end in EMBEDDED:
        client = script.read_text()
        if "$[[" in client:
            raise SystemExit(f"{script.name} must not contain '$[[' (GitLab would interpolate it)")
        for path in templates:
            text = path.read_text()
            wanted = embedded(text, client, start, end)
            if wanted != text:
                stale.append(path)
                if not check:
                    path.write_text(wanted)
    if check and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"stale: {names}; run gitlab-templates/embed-client.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
