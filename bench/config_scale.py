"""What a large config costs: load time and memory against the number of roles.

For each size, a config of that many roles (AWS, one rule each, four conditions: an exact
repository id, an exact ref, a list of events and a workflow glob, all different from role to
role) is written once, then measured in rounds that cycle through the sizes (so drift in a shared
machine's load falls on every size alike), each in a fresh process:

- `ci-broker check`: wall and CPU time, peak RSS;
- the load in process: `load_config` as a whole, then its parse and its build apart, and of
  the build, the time in `compile_condition`;
- `ci-broker serve --workers 2` (sqlite replay store, a local issuer): seconds from launch to
  the first 200 on /readyz, and the peak RSS of the master and of each worker.

Medians over the rounds are printed; the machine's load average is printed beside them.

    python -m bench.config_scale                       # 1k, 5k, 10k, 20k roles, 3 rounds
    python -m bench.config_scale --sizes 10000 --rounds 5
    python -m bench.config_scale --quick               # proves the script works (CI)

`--broker-path DIR` measures the `broker` package found in DIR instead (a worktree of another
commit, for a before/after comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    Procs,
    broker_config,
    cpu_seconds,
    gunicorn_workers,
    load_average,
    machine,
    peak_rss_mb,
    signing_key,
    wait_http,
    write_yaml,
)

SIZES = (1000, 5000, 10000, 20000)
QUICK_SIZES = (50, 200)
TARGETS = {"load_seconds_10k": 2.0, "serve_ready_seconds_10k": 3.0}


def role(i: int) -> dict[str, Any]:
    return {
        "cloud": "aws",
        "aws": {"role_arn": f"arn:aws:iam::123456789012:role/deploy-{i:05d}", "region": "eu-west-1"},
        "allow": [
            {
                "provider": "github",
                "claims": {
                    "repository_id": str(100000000 + i),
                    "ref": "refs/heads/main",
                    "event_name": ["push", "workflow_dispatch"],
                    "job_workflow_ref": {
                        "glob": f"octo-org/repo-{i}/.github/workflows/*.yml@refs/heads/main"
                    },
                },
            }
        ],
    }


def write_scaled_config(path: Path, roles: int, issuer_url: str, key: Path) -> Path:
    document = broker_config(
        "https://broker.example.com",
        issuer_url,
        key,
        {f"deploy-{i:05d}": role(i) for i in range(roles)},
        replay_store=f"sqlite:///{path.with_suffix('.db')}",
    )
    return write_yaml(path, document)


# -- one measurement, each in a fresh process ------------------------------------------------------


# `ci-broker check` in a fresh process that reports its own peak RSS as it ends: the kernel's
# figure for a child (wait4, RUSAGE_CHILDREN) starts from the parent's at the fork.
CHECK = """
import sys
from broker.cli import main
code = main(["check", "--config", sys.argv[1]])
status = open("/proc/self/status").read().splitlines()
print(next(line for line in status if line.startswith("VmHWM:")).split()[1], file=sys.stderr)
sys.exit(code)
"""


def children_cpu() -> float:
    """CPU seconds of every child process this one has waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_check(config: Path, env: dict[str, str]) -> dict[str, float]:
    """`ci-broker check`: wall seconds, CPU seconds and peak RSS of that process alone."""
    before = children_cpu()
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHECK, str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=config.parent,
    )
    out, err = proc.communicate(timeout=600)
    wall = time.monotonic() - start
    if proc.returncode != 0 or b"ok: " not in out:
        raise RuntimeError(f"check failed ({proc.returncode}): {err.decode()[-500:]}")
    return {
        "check_seconds": wall,
        "check_cpu_seconds": children_cpu() - before,
        "check_rss_mb": int(err.split()[-1]) / 1024,
    }


# Run with `python -c` in a fresh process, from outside the repository, so that `--broker-path`
# decides which `broker` package it measures.
BREAKDOWN = """
import contextlib, json, sys, time
from pathlib import Path
import broker.config as loader

# The parse and the collector's state as load_config has them.
if hasattr(loader, "parse_yaml"):  # a tree from before broker/strictyaml.py
    parse, collector_paused = loader.parse_yaml, contextlib.nullcontext
else:
    from broker.strictyaml import collector_paused, loads as parse

config = Path(sys.argv[1])
cpu = time.process_time
start = cpu()
loaded = loader.load_config(config)
load = cpu() - start
text = config.read_text()
compiling = [0.0]
compile_condition = getattr(loader, "compile_condition", None)

def timed(*args, **kwargs):
    begun = cpu()
    try:
        return compile_condition(*args, **kwargs)
    finally:
        compiling[0] += cpu() - begun

if compile_condition is not None:
    loader.compile_condition = timed
# The load above filled the compiled-pattern caches; the build measured apart starts without them.
import re
import broker.policy as policy
re.purge()
getattr(getattr(policy, "compile_pattern", None), "cache_clear", lambda: None)()
with collector_paused():
    start = cpu()
    data = parse(text)
    parsed = cpu() - start
    built = loader.build_config(data, base_dir=config.parent)
    build = cpu() - start - parsed
assert len(built.roles) == len(loaded.roles)
print(json.dumps({
    "load_cpu_seconds": load,
    "parse_cpu_seconds": parsed,
    "build_cpu_seconds": build,
    "compile_cpu_seconds": compiling[0] if compile_condition is not None else float("nan"),
}))
"""


def run_breakdown(config: Path, env: dict[str, str]) -> dict[str, float]:
    """In a fresh process: load_config as a whole, then its parse and its build apart (the build
    timing the compiler), with the collector as load_config has it."""
    out = subprocess.run(
        [sys.executable, "-c", BREAKDOWN, str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=config.parent,
    )
    if out.returncode != 0:
        raise RuntimeError(f"breakdown failed: {out.stderr[-800:]}")
    return dict(json.loads(out.stdout))


def run_serve(procs: Procs, config: Path, env: dict[str, str]) -> dict[str, float]:
    """`ci-broker serve --workers 2`: seconds to the first 200 on /readyz, and peak RSS."""
    port = procs.port()
    start = time.monotonic()
    proc = procs.start(
        f"serve-{port}",
        [sys.executable, "-m", "broker", "serve", "--config", str(config), "--workers", "2"]
        + ["--bind", f"127.0.0.1:{port}", "--log-level", "WARNING"],
        "server",
        env=env,
        cwd=config.parent,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, 300, want=200)
        ready = time.monotonic() - start
        workers = gunicorn_workers(proc)
        return {
            "serve_ready_seconds": ready,
            # Master and workers until ready: on a busy machine, steadier than the wall time.
            "serve_cpu_seconds": sum(cpu_seconds(pid) for pid in [proc.pid, *workers]),
            "serve_master_rss_mb": peak_rss_mb(proc.pid),
            "serve_worker_rss_mb": max(peak_rss_mb(pid) for pid in workers),
        }
    finally:
        procs.stop(proc)


# -- the run --------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from broker.sandbox.issuer import LocalIssuer

    env = dict(os.environ)
    if args.broker_path:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(Path(args.broker_path).resolve()), env.get("PYTHONPATH")])
        )
    procs = Procs(work, {})
    issuer = LocalIssuer().start()
    try:
        key = signing_key(work)
        configs = {n: write_scaled_config(work / f"roles-{n}.yaml", n, issuer.url, key) for n in args.sizes}
        rounds: dict[int, list[dict[str, float]]] = {n: [] for n in args.sizes}
        for _ in range(args.rounds):
            for n, config in configs.items():
                figures: dict[str, float] = {"load_average": load_average()}
                figures.update(run_check(config, env))
                figures.update(run_breakdown(config, env))
                if args.serve:
                    figures.update(run_serve(procs, config, env))
                rounds[n].append(figures)
    finally:
        procs.stop_all()
        issuer.stop()
    rows = []
    for n, config in configs.items():
        row: dict[str, Any] = {"roles": n, "file_mb": config.stat().st_size / 1e6}
        for name in rounds[n][0]:
            row[name] = statistics.median(r[name] for r in rounds[n])
        rows.append(row)
    return {"machine": machine(), "rounds": args.rounds, "rows": rows}


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, libyaml: {m['pyyaml_libyaml']}",
        f"medians over {result['rounds']} round(s); times in seconds, memory in MB",
        "",
        f"{'roles':>7}{'file MB':>9}{'check':>8}{'CPU':>7}{'RSS':>7}{'load CPU':>10}{'parse':>7}"
        f"{'build':>7}{'compile':>9}{'serve ready':>13}{'CPU':>7}{'master RSS':>12}{'worker RSS':>12}{'load':>6}",
    ]
    for r in result["rows"]:
        serve = (
            f"{r['serve_ready_seconds']:>13.2f}{r['serve_cpu_seconds']:>7.2f}"
            f"{r['serve_master_rss_mb']:>12.0f}{r['serve_worker_rss_mb']:>12.0f}"
            if "serve_ready_seconds" in r
            else f"{'-':>13}{'-':>7}{'-':>12}{'-':>12}"
        )
        lines.append(
            f"{r['roles']:>7}{r['file_mb']:>9.1f}{r['check_seconds']:>8.2f}{r['check_cpu_seconds']:>7.2f}"
            f"{r['check_rss_mb']:>7.0f}{r['load_cpu_seconds']:>10.2f}{r['parse_cpu_seconds']:>7.2f}"
            f"{r['build_cpu_seconds']:>7.2f}{r['compile_cpu_seconds']:>9.2f}{serve}{r['load_average']:>6.1f}"
        )
    lines += [
        "",
        "check: `ci-broker check` as a whole (starting Python included); load CPU: load_config in",
        "process; parse and build measured apart (compile: compile_condition's share of the build);",
        "serve ready: `ci-broker serve --workers 2` launched to its first 200 on /readyz (CPU: its",
        "master's and workers' by then; on a busy machine the steadier figure).",
    ]
    tenk = next((r for r in result["rows"] if r["roles"] == 10000), None)
    if tenk:
        lines.append(
            f"10,000 roles: check {tenk['check_seconds']:.2f} s, {tenk['check_cpu_seconds']:.2f} s CPU "
            f"(target < {TARGETS['load_seconds_10k']}), "
            + (
                f"serve ready {tenk['serve_ready_seconds']:.2f} s, {tenk['serve_cpu_seconds']:.2f} s CPU "
                f"(target < {TARGETS['serve_ready_seconds_10k']})"
                if "serve_ready_seconds" in tenk
                else "serve not measured"
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", help=f"role counts, comma-separated (default {','.join(map(str, SIZES))})")
    parser.add_argument("--rounds", type=int, help="rounds through the sizes (default 3; quick 1)")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, one round")
    parser.add_argument("--no-serve", dest="serve", action="store_false", help="skip `serve` readiness")
    parser.add_argument("--broker-path", help="measure the broker package in this directory instead")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    args.sizes = (
        [int(s) for s in args.sizes.split(",")] if args.sizes else list(QUICK_SIZES if args.quick else SIZES)
    )
    args.rounds = args.rounds or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="ci-broker-config-scale-") as tmp:
        result = measure(args, Path(tmp))
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
