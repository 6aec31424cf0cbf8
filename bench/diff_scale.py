"""What `ci-broker diff` costs as a policy grows: time and memory against the number of roles.

For each size N, two configs of N AWS roles are written. Every role has two GitHub rules, all
values different from role to role: an exact repository id, a `ref` glob and a
`job_workflow_ref` glob; and a release rule with a `ref` regex (`refs/tags/v[0-9]+...`). A
top-level deny rule covers every role (`refs/heads/dependabot/**`). The change between the two:
one role in ten has its `ref` widened from `refs/heads/main` to `refs/heads/*`, and one in ten
(another) gains a branch in its release regex. So the diff has 2N/10 gained sets to find, each
confirmed against both configs, and 8N/10 roles to prove unchanged.

Each size is measured in rounds (cycling through the sizes, so a shared machine's drift falls on
each alike), in a fresh process: `ci-broker diff OLD NEW --format json`, its wall and CPU time and
peak RSS; the config load alone is measured the same way (`ci-broker check --policy-only`) so the
diff's own share can be read off. Medians are printed with the machine's load average.

    python -m bench.diff_scale                  # 10, 100, 1,000 roles, 3 rounds
    python -m bench.diff_scale --sizes 1000 --rounds 5
    python -m bench.diff_scale --quick          # proves the script works (CI)
    python -m bench.diff_scale --json FILE      # the figures in FILE as well
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, broker_config, load_average, machine, write_yaml

SIZES = (10, 100, 1000)
QUICK_SIZES = (10, 20)
ISSUER = "https://token.actions.githubusercontent.com"


def role(i: int, *, widened: bool, release_branch: bool) -> dict[str, Any]:
    releases = rf"refs/tags/v[0-9]+\.[0-9]+\.[0-9]+-r{i}"
    if release_branch:
        releases = rf"(refs/tags/v[0-9]+\.[0-9]+\.[0-9]+-r{i}|refs/heads/release-{i}/[a-z0-9.]+)"
    return {
        "cloud": "aws",
        "aws": {"role_arn": f"arn:aws:iam::123456789012:role/deploy-{i:05d}"},
        "allow": [
            {
                "provider": "github",
                "claims": {
                    "repository_id": str(100000000 + i),
                    "ref": {"glob": "refs/heads/*"} if widened else "refs/heads/main",
                    "event_name": ["push", "workflow_dispatch"],
                    "job_workflow_ref": {
                        "glob": f"octo-org/repo-{i}/.github/workflows/*.yml@refs/heads/main"
                    },
                },
            },
            {
                "provider": "github",
                "claims": {
                    "repository_id": str(100000000 + i),
                    "ref": {"regex": releases},
                    "event_name": "push",
                },
            },
        ],
    }


def write_configs(work: Path, roles: int) -> tuple[Path, Path]:
    paths = []
    for side in ("old", "new"):
        changed = side == "new"
        document = broker_config(
            "https://broker.example.com",
            ISSUER,
            work / "signing.pem",  # never read: diff loads with throwaway keys
            {
                f"deploy-{i:05d}": role(
                    i, widened=changed and i % 10 == 3, release_branch=changed and i % 10 == 7
                )
                for i in range(roles)
            },
        )
        document["deny"] = [
            {
                "provider": "github",
                "claims": {"ref": {"glob": "refs/heads/dependabot/**"}},
                "reason": "dependency bots never deploy",
            }
        ]
        paths.append(write_yaml(work / f"{side}-{roles}.yaml", document))
    return paths[0], paths[1]


# A fresh process that runs one command and reports its own peak RSS (VmHWM) as it ends.
RUN = """
import contextlib, io, sys
from broker.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
status = open("/proc/self/status").read().splitlines()
print(next(line for line in status if line.startswith("VmHWM:")).split()[1], file=sys.stderr)
sys.stdout.write(out.getvalue())
sys.exit(code)
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(argv: list[str]) -> tuple[dict[str, float], str]:
    before = children_cpu()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", RUN, *argv], capture_output=True, text=True, timeout=3600, cwd=ROOT
    )
    wall = time.monotonic() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rss_kb = int(proc.stderr.strip().splitlines()[-1])
    return {"wall": wall, "cpu": children_cpu() - before, "rss_mb": rss_kb / 1024}, proc.stdout


def measure(sizes: tuple[int, ...], rounds: int, work: Path) -> dict[str, Any]:
    files = {n: write_configs(work, n) for n in sizes}
    samples: dict[int, dict[str, list[float]]] = {n: {} for n in sizes}
    gained: dict[int, int] = {}
    for _ in range(rounds):
        for n in sizes:
            old, new = files[n]
            load, _ = run(["check", "--policy-only", "--config", str(new)])
            diff, out = run(["diff", str(old), str(new), "--format", "json"])
            result = json.loads(out)
            gained[n] = sum(len(r["gained"]) for r in result["roles"].values())
            lost = sum(len(r["lost"]) for r in result["roles"].values())
            if gained[n] != 2 * (n // 10) or lost:
                raise SystemExit(f"{n} roles: diff found {gained[n]} gained and {lost} lost sets")
            for name, value in {
                **{f"load_{k}": v for k, v in load.items()},
                **{f"diff_{k}": v for k, v in diff.items()},
            }.items():
                samples[n].setdefault(name, []).append(value)
    return {
        "sizes": {
            n: {
                "gained_sets": gained[n],
                "file_kb": round(files[n][1].stat().st_size / 1024, 1),
                **{k: round(statistics.median(v), 3) for k, v in samples[n].items()},
            }
            for n in sizes
        },
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, one round")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    sizes, rounds = (QUICK_SIZES, 1) if args.quick else (tuple(args.sizes), args.rounds)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="diff-scale-") as tmp:
        figures = measure(sizes, rounds, Path(tmp))
    figures.update(machine=machine(), load_average=[round(load_before, 1), round(load_average(), 1)])
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print()
    print(
        "| roles | file KB | gained sets | diff CPU s (wall) | diff peak RSS MB | load alone CPU s | load RSS MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, f in figures["sizes"].items():
        print(
            f"| {n:,} | {f['file_kb']} | {f['gained_sets']} | {f['diff_cpu']:.2f} ({f['diff_wall']:.2f}) | "
            f"{f['diff_rss_mb']:.0f} | {f['load_cpu']:.2f} | {f['load_rss_mb']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
