"""`ci-broker test`: table-driven policy tests (contract sections 10 and 12).

Each case is a claims set from one provider and the roles it must be allowed and denied. A case
is evaluated as `explain` does (`Config.decide`: deny rules, then allow rules; no signature, time
or required-claim checks), and a failing case shows the `explain` trace of each role it got
wrong. Results also go out as JUnit XML, which GitHub and GitLab show as test reports.
"""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker import strictyaml
from broker.config import Config
from broker.explain import NOT_CHECKED, resolve_provider, trace_lines
from broker.schema import Findings, Section, join, type_name


class TestFileError(Exception):
    """The test file cannot be read or does not describe valid cases: exit 2."""

    __test__ = False  # not a pytest class

    def __init__(self, file: str, messages: list[str]) -> None:
        self.file = file
        self.messages = messages
        super().__init__("\n".join(messages))


@dataclass(frozen=True)
class Case:
    __test__ = False

    name: str
    path: str
    provider: str
    claims: dict[str, Any]
    allow: tuple[str, ...]
    deny: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    case: Case
    failures: tuple[str, ...]  # one line per role decided against the expectation
    trace: tuple[str, ...]  # the explain trace of each of those roles

    @property
    def passed(self) -> bool:
        return not self.failures


def load_cases(path: str | Path, config: Config) -> list[Case]:
    file = str(path)
    try:
        data = strictyaml.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TestFileError(file, [f"error: {file}: cannot read: {exc}"]) from None
    except strictyaml.YamlProblem as exc:
        raise TestFileError(file, [f"error: {file}: {exc}"]) from None
    findings = Findings()
    top = Section(data, "", findings)
    raw_cases = top.raw("cases", required=True)
    top.finish()
    cases: list[Case] = []
    if raw_cases is not None and (not isinstance(raw_cases, list) or not raw_cases):
        findings.error("cases", "must be a non-empty list of test cases")
        raw_cases = []
    names: set[str] = set()
    for i, item in enumerate(raw_cases or []):
        case = _case(Section(item, join("cases", i), findings), config)
        if case is not None:
            if case.name in names:
                findings.error(case.path + ".name", f"{case.name!r} is already the name of another case")
            names.add(case.name)
            cases.append(case)
    if findings.errors:
        raise TestFileError(file, [f.render(file) for f in findings.errors])
    return cases


def _case(s: Section, config: Config) -> Case | None:
    name = s.string("name", required=True)
    provider = s.string("provider", required=True)
    claims = s.raw("claims", required=True)
    allow = s.string_list("allow")
    deny = s.string_list("deny")
    s.finish()
    if provider is not None and provider not in config.providers:
        s.findings.error(s.at("provider"), f"no provider is named {provider!r} in the config")
    if claims is not None and not isinstance(claims, dict):
        s.findings.error(
            s.at("claims"), f"must be a mapping of claim names to values, not a {type_name(claims)}"
        )
        claims = None
    for claim, value in (claims or {}).items():
        if not isinstance(claim, str) or not _json_like(value):
            s.findings.error(
                join(s.at("claims"), str(claim)),
                "claims are JSON values (quote dates and other YAML-only values)",
            )
    if not allow and not deny and s.valid:
        s.findings.error(s.path, "a case needs at least one role in allow or deny")
    for key, roles in (("allow", allow), ("deny", deny)):
        for j, role in enumerate(roles):
            if role not in config.roles:
                s.findings.error(join(s.at(key), j), f"no role is named {role!r} in the config (typo?)")
    both = sorted(set(allow) & set(deny))
    if both:
        s.findings.error(s.path, f"{', '.join(both)} cannot be both allowed and denied")
    if name is None or provider is None or claims is None:
        return None
    return Case(name, s.path, provider, claims, allow, deny)


def _json_like(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, list):
        return all(_json_like(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_like(v) for k, v in value.items())
    return False


def run_case(config: Config, case: Case) -> Outcome:
    provider = resolve_provider(config, case.claims, case.provider)
    failures: list[str] = []
    trace: list[str] = []
    for expected, roles in ((True, case.allow), (False, case.deny)):
        for role_name in roles:
            role, decision = config.decide(role_name, provider, case.claims, trace=True)
            if decision.allowed != expected:
                want, got = ("allowed", "denied") if expected else ("denied", "allowed")
                failures.append(f"role {role_name}: expected {want}, was {got}")
                trace += trace_lines(role, provider, decision)
    return Outcome(case, tuple(failures), tuple(trace))


def run(config: Config, cases: list[Case]) -> list[Outcome]:
    return [run_case(config, case) for case in cases]


def report(outcomes: list[Outcome]) -> str:
    lines: list[str] = []
    for outcome in outcomes:
        if outcome.passed:
            continue
        lines.append(f"FAIL: {outcome.case.name} ({outcome.case.path})")
        lines += [f"  {failure}" for failure in outcome.failures]
        lines += [f"  {line}" for line in outcome.trace]
    failed = sum(not o.passed for o in outcomes)
    if failed:
        lines.append(NOT_CHECKED)
    lines.append(f"{len(outcomes) - failed} passed, {failed} failed")
    return "\n".join(lines)


def junit(outcomes: list[Outcome], suite: str) -> bytes:
    """JUnit XML: one testsuite, one testcase per case; a failure's text is its explain trace."""
    failed = sum(not o.passed for o in outcomes)
    root = ET.Element("testsuites", name="ci-broker test", tests=str(len(outcomes)), failures=str(failed))
    element = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(outcomes)),
        failures=str(failed),
        errors="0",
        skipped="0",
        timestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
    )
    for outcome in outcomes:
        case = ET.SubElement(element, "testcase", name=outcome.case.name, classname=suite)
        if not outcome.passed:
            failure = ET.SubElement(
                case, "failure", message="; ".join(outcome.failures), type="PolicyTestFailure"
            )
            failure.text = "\n".join([*outcome.failures, *outcome.trace])
    ET.indent(root)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml
