"""`ci-broker test`: table-driven cases, failures with the explain trace, JUnit XML, exit codes."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from policy_helpers import GITHUB, policy, rule, write

from tests.helpers import ci_broker

MAIN = {"repository_id": "892734123", "ref": "refs/heads/main", "event_name": "push"}
CLAIMS = {**MAIN, "repository": "octo-org/app", "repository_owner_id": "1"}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    roles = {"aws-deploy-prod": [rule(**MAIN)], "gcp-deploy": [rule(**{**MAIN, "repository_id": "2"})]}
    deny = [{"provider": "github", "claims": {"ref": "refs/heads/frozen"}, "reason": "frozen branch"}]
    return write(policy(roles, deny=deny), tmp_path / "broker.yaml")  # no signing key beside it


def cases_file(tmp_path: Path, cases: list[dict]) -> Path:
    path = tmp_path / "policy-tests.yaml"
    path.write_text(yaml.safe_dump({"cases": cases}, sort_keys=False))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return ci_broker("test", *args)


def test_the_contracts_example_passes(config, tmp_path):
    cases = cases_file(
        tmp_path,
        [
            {
                "name": "main branch of the app repo may deploy",
                "provider": "github",
                "claims": CLAIMS,
                "allow": ["aws-deploy-prod"],
                "deny": ["gcp-deploy"],
            }
        ],
    )
    result = cli("--config", str(config), str(cases))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("1 passed, 0 failed")


def test_a_failing_case_exits_1_and_shows_the_explain_trace(config, tmp_path):
    cases = cases_file(
        tmp_path,
        [
            {"name": "ok", "provider": "github", "claims": CLAIMS, "allow": ["aws-deploy-prod"]},
            {
                "name": "feature branches may deploy",
                "provider": "github",
                "claims": {**CLAIMS, "ref": "refs/heads/feature"},
                "allow": ["aws-deploy-prod"],
            },
            {
                "name": "frozen is denied",
                "provider": "github",
                "claims": {**CLAIMS, "ref": "refs/heads/frozen"},
                "deny": ["aws-deploy-prod"],
            },
        ],
    )
    result = cli("--config", str(config), str(cases))
    assert result.returncode == 1
    out = result.stdout
    assert "FAIL: feature branches may deploy (cases[1])" in out
    assert "role aws-deploy-prod: expected allowed, was denied" in out
    assert "[FAIL] ref: 'refs/heads/feature' does not match == 'refs/heads/main'" in out
    assert "FAIL: ok" not in out and "FAIL: frozen" not in out
    assert out.strip().endswith("2 passed, 1 failed")


def test_a_deny_rule_shows_in_the_trace_of_a_case_expecting_allow(config, tmp_path):
    cases = cases_file(
        tmp_path,
        [
            {
                "name": "frozen may deploy",
                "provider": "github",
                "claims": {**CLAIMS, "ref": "refs/heads/frozen"},
                "allow": ["aws-deploy-prod"],
            }
        ],
    )
    result = cli("--config", str(config), str(cases))
    assert result.returncode == 1
    assert "DENY by deny[0]: frozen branch" in result.stdout


def test_junit_xml_has_one_testcase_per_case_and_the_trace_in_failures(config, tmp_path):
    cases = cases_file(
        tmp_path,
        [
            {"name": "passes", "provider": "github", "claims": CLAIMS, "allow": ["aws-deploy-prod"]},
            {"name": "fails", "provider": "github", "claims": CLAIMS, "allow": ["gcp-deploy"]},
        ],
    )
    report = tmp_path / "report.xml"
    result = cli("--config", str(config), str(cases), "--junit", str(report))
    assert result.returncode == 1
    root = ET.parse(report).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    by_name = {case.get("name"): case for case in suite.findall("testcase")}
    assert by_name["passes"].find("failure") is None
    failure = by_name["fails"].find("failure")
    assert failure is not None and "role gcp-deploy: expected allowed, was denied" in failure.get(
        "message", ""
    )
    assert "[FAIL] repository_id" in (failure.text or "")


@pytest.mark.parametrize(
    "case,message",
    [
        ({"provider": "github", "claims": {}, "allow": ["aws-deploy-prod"]}, "cases[0].name: is required"),
        (
            {"name": "x", "provider": "gh", "claims": {}, "allow": ["aws-deploy-prod"]},
            "no provider is named 'gh'",
        ),
        (
            {"name": "x", "provider": "github", "claims": {}, "allow": ["aws-deploy-prd"]},
            "no role is named 'aws-deploy-prd'",
        ),
        ({"name": "x", "provider": "github", "claims": {}}, "at least one role in allow or deny"),
        ({"name": "x", "provider": "github", "claims": {}, "alow": ["aws-deploy-prod"]}, "cases[0].alow"),
        (
            {
                "name": "x",
                "provider": "github",
                "claims": {},
                "allow": ["gcp-deploy"],
                "deny": ["gcp-deploy"],
            },
            "cannot be both allowed and denied",
        ),
        ({"name": "x", "provider": "github", "claims": ["ref"], "allow": ["gcp-deploy"]}, "cases[0].claims"),
    ],
)
def test_a_test_file_error_exits_2_with_its_key_path(config, tmp_path, case, message):
    result = cli("--config", str(config), str(cases_file(tmp_path, [case])))
    assert result.returncode == 2
    assert message in result.stderr
    assert "policy-tests.yaml" in result.stderr


def test_a_yaml_date_in_claims_is_an_error_not_a_silent_mismatch(config, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "cases:\n  - name: x\n    provider: github\n    claims: {ref: 2024-01-01}\n    allow: [aws-deploy-prod]\n"
    )
    result = cli("--config", str(config), str(path))
    assert result.returncode == 2 and "cases[0].claims.ref" in result.stderr


def test_a_config_error_exits_2(tmp_path):
    bad = policy({"r": [rule(**MAIN)]})
    bad["roles"]["r"]["allow"][0]["claims"]["ref"] = {"glob": ""}
    config = write(bad, tmp_path / "broker.yaml")
    result = cli(
        "--config",
        str(config),
        str(cases_file(tmp_path, [{"name": "x", "provider": "github", "claims": {}, "allow": ["r"]}])),
    )
    assert result.returncode == 2 and "roles.r.allow[0].claims.ref" in result.stderr


def test_the_provider_may_come_from_iss_when_the_case_names_it(config, tmp_path):
    cases = cases_file(
        tmp_path,
        [
            {
                "name": "iss",
                "provider": "github",
                "claims": {**CLAIMS, "iss": GITHUB},
                "allow": ["aws-deploy-prod"],
            }
        ],
    )
    assert cli("--config", str(config), str(cases)).returncode == 0
