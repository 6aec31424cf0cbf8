"""deploy/prometheus and deploy/grafana: checked by promtool, and naming only metrics the broker exports.

promtool comes with Debian's `prometheus` package; in CI (CI=true) its absence is a failure, on a
developer's machine a skip that says what to install. The metric names the rules and the
dashboard's queries use are cross-checked against a real scrape of the broker's /metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ci-broker.json"

# PromQL words that look like names: functions are recognised by their `(`, these are not.
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
     "inf", "nan"}
)  # fmt: skip
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("promtool is not installed; .ci/run installs the Debian package prometheus")
    pytest.skip("promtool is not installed (apt-get install prometheus) - rule checks skipped")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    expr = re.sub(r"(?<![\w:])\d[\w.]*", "", expr)  # numbers and durations (offset 15m)
    names = set()
    for match in NAME.finditer(expr):
        word = match.group()
        rest = expr[match.end() :].lstrip()
        if word in KEYWORDS or rest.startswith("("):
            continue
        names.add(word)
    return names


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.fixture(scope="module")
def exported(sandbox, tmp_path_factory) -> set[str]:
    """Every series name a broker's /metrics offers, after it has granted, refused and alerted."""
    from broker.app import create_app  # noqa: F401  (the app's metrics exist once it is built)

    config = sandbox.config_dict()
    config["server"]["replay_store"] = f"sqlite:///{tmp_path_factory.mktemp('metrics') / 'state.db'}"
    config["server"]["alerts"] = {"denied_burst": {"count": 2, "window": 60}}
    app = sandbox.serve_in_process(config)
    try:
        assert sandbox.exchange(sandbox.github_token()).status_code == 200
        for _ in range(2):
            assert sandbox.exchange(sandbox.github_token(repository_id="9")).status_code == 403
        assert app.extensions["broker"].alerts.queue.flush(10)
        text = requests.get(f"{sandbox.broker_url}/metrics", timeout=10).text
    finally:
        app.extensions["broker"].close()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
        names |= {sample.name for sample in family.samples}
    return names


def test_the_rules_pass_promtool_check():
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_promtool_unit_tests():
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_unit_test():
    tests = RULE_TESTS.read_text()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        assert f"alertname: {rule['alert']}" in tests, rule["alert"]


def test_the_rules_name_only_metrics_the_broker_exports(exported):
    used = set().union(*map(metric_names, rule_expressions()))
    assert used, "the parser found no names: it would pass anything"
    assert sorted(used - exported) == []


def test_the_dashboard_is_json_with_a_query_in_every_panel(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", "the data source is the dashboard's variable"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource"}


def test_the_dashboard_queries_name_only_metrics_the_broker_exports(exported):
    used = set().union(*map(metric_names, dashboard_expressions()))
    assert {"ci_broker_alerts_total", "ci_broker_blocks_active", "ci_broker_exchanges_total"} <= used
    assert sorted(used - exported) == []


def test_the_name_check_catches_a_name_the_broker_does_not_export(exported):
    assert metric_names('sum by (role) (rate(ci_broker_exchange_total{outcome="granted"}[5m]))') == {
        "ci_broker_exchange_total"
    }
    assert "ci_broker_exchange_total" not in exported
