"""The config file, parsed once into frozen typed objects.

Every problem is reported with the file and the key path, and loading refuses the whole file on
any error: a typo must never silently weaken policy. Roles' cloud sections are parsed by the cloud
kind they name (`broker.clouds`), so adding a cloud adds no branches here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from broker import clouds, strictyaml
from broker.alertconfig import AlertSettings, read_alert_settings
from broker.auditconfig import AuditSettings, read_audit_settings
from broker.claims import ClaimSchema
from broker.hours import Hours, parse_hours
from broker.keys import SigningKey, load_signing_key
from broker.policy import (
    Condition,
    Decision,
    DenyRule,
    Rule,
    compile_condition,
    compile_role_pattern,
    evaluate,
    unknown_role,
)
from broker.providers import ProviderConfig as ProviderConfig
from broker.providers import parse_providers
from broker.replay import store_url_problem
from broker.rulechecks import allow_rule_problems
from broker.schema import Finding, Findings, Section, join
from broker.sessions import MAX_SESSION_LIFETIME

ROLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RATE = re.compile(r"([1-9][0-9]{0,8})/(second|minute|hour)")


class ConfigError(Exception):
    def __init__(self, file: str, findings: list[Finding]) -> None:
        self.file = file
        self.findings = findings
        super().__init__("\n".join(f.render(file) for f in findings if f.level == "error"))


@dataclass(frozen=True)
class RateLimits:
    per_identity: str | None
    per_client: str | None
    per_session: str | None = None  # refreshes of one broker session (section 8)


@dataclass(frozen=True)
class ServerConfig:
    issuer: str
    audience: str
    signing_keys: tuple[SigningKey, ...]
    replay_store: str
    token_max_age: int
    leeway: int
    rate_limits: RateLimits | None
    alerts: AlertSettings = AlertSettings()
    audit: AuditSettings = AuditSettings()


@dataclass(frozen=True)
class RoleConfig:
    name: str
    cloud: str
    settings: Any  # the cloud kind's frozen settings object
    rules: tuple[Rule, ...]
    denies: tuple[DenyRule, ...] = ()  # the top-level deny rules that cover this role
    session_lifetime: int = 0  # seconds a session may be refreshed for (section 8); 0: no sessions
    hours: Hours | None = None  # working hours: a grant outside them raises the off_hours alert

    @property
    def max_duration(self) -> int | None:
        return clouds.kind(self.cloud).max_duration(self.settings)

    @property
    def min_duration(self) -> int:
        return clouds.kind(self.cloud).min_duration(self.settings)


@dataclass(frozen=True)
class Config:
    file: str
    server: ServerConfig
    providers: dict[str, ProviderConfig]
    roles: dict[str, RoleConfig]
    deny: tuple[DenyRule, ...] = ()
    warnings: tuple[Finding, ...] = ()

    def provider_for_issuer(self, issuer: str) -> ProviderConfig | None:
        for provider in self.providers.values():
            if provider.issuer == issuer:
                return provider
        return None

    def decide(
        self, role_name: str, provider: ProviderConfig, claims: Mapping[str, Any], *, trace: bool = False
    ) -> tuple[RoleConfig | None, Decision]:
        """The policy's answer for one role: deny rules, then allow rules; an unknown role is denied.

        The one place both the exchange and `explain` ask, so the two cannot disagree.
        """
        role = self.roles.get(role_name)
        if role is None:
            return None, unknown_role(role_name)
        decision = evaluate(
            role_name, role.rules, provider.name, provider.schema, claims, denies=role.denies, trace=trace
        )
        return role, decision


def load_config(path: str | Path) -> Config:
    """Read, validate and compile a config file; raises ConfigError listing every problem."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, [Finding("error", "<file>", f"cannot read: {exc}")]) from None
    with strictyaml.collector_paused():
        try:
            data = strictyaml.loads(text)
        except strictyaml.YamlProblem as exc:
            raise ConfigError(file, [Finding("error", exc.path or "<file>", exc.message)]) from None
        config = build_config(data, base_dir=Path(path).resolve().parent, file=file)
        del data  # freed before the collector is back, so its next pass sees only the config
    return config


def build_config(data: Any, *, base_dir: Path, file: str = "<config>") -> Config:
    findings = Findings()
    top = Section(data, "", findings)
    server = _server(top.section("server", required=True), base_dir)
    providers = parse_providers(top.section("providers", required=True))
    roles = _roles(top.section("roles", required=True), providers)
    deny = _deny_rules(top, providers, roles)
    top.finish()
    if findings.errors or server is None:
        raise ConfigError(file, findings.errors or [Finding("error", "server", "is invalid")])
    roles = {
        name: replace(role, denies=tuple(d for d in deny if d.covers(name))) for name, role in roles.items()
    }
    return Config(
        file=file,
        server=server,
        providers=providers,
        roles=roles,
        deny=deny,
        warnings=tuple(findings.warnings),
    )


def _server(s: Section, base_dir: Path) -> ServerConfig | None:
    issuer = s.url("issuer", required=True)
    if issuer and issuer.endswith("/"):
        s.findings.error(
            s.at("issuer"), "must not end with '/' (it is compared exactly and URLs are built from it)"
        )
    audience = s.string("audience") or issuer
    keys = _signing_keys(s, base_dir)
    # `store` is the shared state's new name (it holds more than used jtis); either spelling, once.
    store, legacy = s.string("store"), s.string("replay_store")
    if store and legacy:
        s.findings.error(s.at("replay_store"), "set either store or replay_store (its old name), not both")
    replay_store = store or legacy or "memory"
    store_problem = store_url_problem(replay_store)
    if store_problem:
        # Not echoed: a redis URL may carry a password.
        s.findings.error(s.at("store" if store else "replay_store"), store_problem)
    token_max_age = s.integer("token_max_age", 900, minimum=1, maximum=86400)
    leeway = s.integer("leeway", 60, minimum=0, maximum=600)
    rate_limits = _rate_limits(s)
    alerts = read_alert_settings(s)
    audit = read_audit_settings(s, base_dir)
    s.finish()
    if not issuer or not audience or not keys or token_max_age is None or leeway is None:
        return None
    return ServerConfig(
        issuer=issuer,
        audience=audience,
        signing_keys=keys,
        replay_store=replay_store,
        token_max_age=token_max_age,
        leeway=leeway,
        rate_limits=rate_limits,
        alerts=alerts,
        audit=audit,
    )


def _signing_keys(s: Section, base_dir: Path) -> tuple[SigningKey, ...]:
    paths = s.string_list("signing_keys", required=True)
    keys: list[SigningKey] = []
    for i, name in enumerate(paths):
        try:
            keys.append(load_signing_key(base_dir / name))
        except ValueError as exc:
            s.findings.error(join(s.at("signing_keys"), i), str(exc))
    if len({k.kid for k in keys}) != len(keys):
        s.findings.error(s.at("signing_keys"), "the same key is listed twice")
    return tuple(keys)


def _rate_limits(s: Section) -> RateLimits | None:
    # YAML 1.1 reads a bare `off` as false; both spellings mean "disabled".
    raw = s.raw("rate_limits", None)
    if raw is False or raw == "off":
        return None
    limits = Section(raw, s.at("rate_limits"), s.findings)
    hint = "N/second, N/minute or N/hour"
    per_identity = limits.string("per_identity", "600/minute", pattern=RATE, hint=hint)
    per_client = limits.string("per_client", "6000/minute", pattern=RATE, hint=hint)
    per_session = limits.string("per_session", "60/minute", pattern=RATE, hint=hint)
    limits.finish()
    return RateLimits(per_identity=per_identity, per_client=per_client, per_session=per_session)


def _roles(s: Section, providers: dict[str, ProviderConfig]) -> dict[str, RoleConfig]:
    roles: dict[str, RoleConfig] = {}
    for name in list(s.keys()):
        r = s.section(name)
        if not isinstance(name, str) or not ROLE_NAME.fullmatch(name):
            s.findings.error(
                r.path,
                "role names are 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
            continue
        cloud = r.choice("cloud", clouds.NAMES, required=True)
        settings = None
        if cloud:
            settings = clouds.kind(cloud).parse_settings(r.section(cloud, required=True))
        for other in clouds.NAMES:
            if other != cloud and other in r:
                r.raw(other)
                s.findings.error(r.at(other), f"does not apply to a role whose cloud is {cloud!r}")
        rules = _rules(r, providers)
        session_lifetime = r.integer("session_lifetime", 0, minimum=0, maximum=MAX_SESSION_LIFETIME)
        hours = _hours(r)
        r.finish()
        if cloud and settings is not None and rules and session_lifetime is not None:
            roles[name] = RoleConfig(
                name=name,
                cloud=cloud,
                settings=settings,
                rules=rules,
                session_lifetime=session_lifetime,
                hours=hours,
            )
    return roles


def _hours(r: Section) -> Hours | None:
    """A role's working hours (`broker.hours`): grants outside them raise the off_hours alert."""
    entries = r.string_list("hours")
    if not entries:
        return None
    try:
        return parse_hours(entries)
    except ValueError as exc:
        r.findings.error(r.at("hours"), str(exc))
        return None


def _rules(r: Section, providers: dict[str, ProviderConfig]) -> tuple[Rule, ...]:
    raw = r.raw("allow", None, required=True)
    path = r.at("allow")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        r.findings.error(path, "must be a non-empty list of rules")
        return ()
    rules: list[Rule] = []
    for i, item in enumerate(raw):
        rule = Section(item, join(path, i), r.findings)
        provider, conditions = _provider_and_claims(rule, providers)
        rule.raw("description")
        rule.finish()
        if provider and conditions:
            problems = allow_rule_problems(providers[provider], conditions)
            for problem in problems:
                r.findings.error(rule.path, problem)
            if not problems:
                rules.append(Rule(index=i, provider=provider, conditions=conditions))
    return tuple(rules) if len(rules) == len(raw) else ()


def _provider_and_claims(
    rule: Section, providers: dict[str, ProviderConfig]
) -> tuple[str | None, tuple[Condition, ...]]:
    """An allow or deny rule's `provider` (None when unknown, reported) and its `claims`, read
    against that provider's claim schema."""
    provider = rule.string("provider", required=True)
    if provider and provider not in providers:
        rule.findings.error(rule.at("provider"), f"unknown provider {provider!r}")
        provider = None
    conditions = _conditions(
        rule.section("claims", required=True), providers[provider].schema if provider else None
    )
    return provider, conditions


def _deny_rules(
    top: Section, providers: dict[str, ProviderConfig], roles: dict[str, RoleConfig]
) -> tuple[DenyRule, ...]:
    """The top-level `deny:` list: same condition forms as `allow`, optional role names or globs."""
    raw = top.raw("deny", None)
    path = top.at("deny")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        top.findings.error(path, "must be a list of deny rules")
        return ()
    rules: list[DenyRule] = []
    for i, item in enumerate(raw):
        entry = Section(item, join(path, i), top.findings)
        provider, conditions = _provider_and_claims(entry, providers)
        role_patterns = _deny_roles(entry, roles)
        reason = entry.string("reason", required=True)
        entry.finish()
        if provider and conditions and role_patterns is not None and reason:
            rules.append(
                DenyRule(
                    index=i,
                    provider=provider,
                    conditions=conditions,
                    roles=tuple(p for p, _ in role_patterns),
                    reason=reason,
                    role_patterns=tuple(c for _, c in role_patterns),
                )
            )
    return tuple(rules)


def _deny_roles(entry: Section, roles: dict[str, RoleConfig]) -> list[tuple[str, re.Pattern[str]]] | None:
    """A deny rule's `roles`: each a name or glob. A plain name that is no role is an error (a typo
    would leave the role it meant unprotected); a glob that matches none is a warning."""
    names = entry.string_list("roles")
    out: list[tuple[str, re.Pattern[str]]] = []
    for i, name in enumerate(names):
        where = join(entry.at("roles"), i)
        compiled = compile_role_pattern(name)
        if any(compiled.fullmatch(role) for role in roles):
            out.append((name, compiled))
        elif "*" in name:
            entry.findings.warning(where, f"{name!r} matches no role")
            out.append((name, compiled))
        else:
            entry.findings.error(where, f"no role is named {name!r}")
            return None
    return out


def _conditions(c: Section, schema: ClaimSchema | None) -> tuple[Condition, ...]:
    if c.valid and not list(c.keys()):
        c.findings.error(
            c.path, "a rule needs at least one claim condition (an empty rule would allow anyone)"
        )
        return ()
    conditions: list[Condition] = []
    for claim in list(c.keys()):
        raw = c.raw(claim)
        if not isinstance(claim, str) or not claim:
            c.findings.error(c.path, f"claim names must be strings, not {claim!r}")
            continue
        if schema is None:
            continue
        try:
            condition = compile_condition(claim, raw, schema)
        except ValueError as exc:
            c.findings.error(c.at(claim), str(exc))
            continue
        if schema.declared and not schema.knows(claim):
            # An oidc provider's schema is the operator's own list: a claim outside it is a typo or
            # a gap in the schema, and a rule on it would silently never hold.
            c.findings.error(c.at(claim), f"{claim!r} is not a claim this provider's schema declares")
            continue
        conditions.append(condition)
    return tuple(conditions) if schema is not None and len(conditions) == len(list(c.keys())) else ()
