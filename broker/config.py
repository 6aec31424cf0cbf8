"""The config file, parsed once into frozen typed objects.

Every problem is reported with the file and the key path, and loading refuses the whole file on
any error: a typo must never silently weaken policy. Roles' cloud sections are parsed by the cloud
kind they name (`broker.clouds`), so adding a cloud adds no branches here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker import clouds, strictyaml
from broker.claims import SCHEMAS, ClaimSchema
from broker.keys import SigningKey, load_signing_key
from broker.policy import Condition, Rule, compile_condition
from broker.replay import store_url_problem
from broker.schema import Finding, Findings, Section, join

ROLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RATE = re.compile(r"([1-9][0-9]{0,8})/(second|minute|hour)")
# Asymmetric algorithms only: HS* would let anyone holding the issuer's public key mint tokens.
PROVIDER_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")


class ConfigError(Exception):
    def __init__(self, file: str, findings: list[Finding]) -> None:
        self.file = file
        self.findings = findings
        super().__init__("\n".join(f.render(file) for f in findings if f.level == "error"))


@dataclass(frozen=True)
class RateLimits:
    per_identity: str | None
    per_client: str | None


@dataclass(frozen=True)
class ServerConfig:
    issuer: str
    audience: str
    signing_keys: tuple[SigningKey, ...]
    replay_store: str
    token_max_age: int
    leeway: int
    rate_limits: RateLimits | None


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    issuer: str
    type: str
    jwks_uri: str | None
    ca_bundle: str | None
    algorithms: tuple[str, ...]

    @property
    def schema(self) -> ClaimSchema:
        return SCHEMAS[self.type]


@dataclass(frozen=True)
class RoleConfig:
    name: str
    cloud: str
    settings: Any  # the cloud kind's frozen settings object
    rules: tuple[Rule, ...]

    @property
    def max_duration(self) -> int | None:
        return clouds.kind(self.cloud).max_duration(self.settings)


@dataclass(frozen=True)
class Config:
    file: str
    server: ServerConfig
    providers: dict[str, ProviderConfig]
    roles: dict[str, RoleConfig]
    warnings: tuple[Finding, ...] = ()

    def provider_for_issuer(self, issuer: str) -> ProviderConfig | None:
        for provider in self.providers.values():
            if provider.issuer == issuer:
                return provider
        return None


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
    providers = _providers(top.section("providers", required=True))
    roles = _roles(top.section("roles", required=True), providers)
    top.finish()
    if findings.errors or server is None:
        raise ConfigError(file, findings.errors or [Finding("error", "server", "is invalid")])
    return Config(
        file=file, server=server, providers=providers, roles=roles, warnings=tuple(findings.warnings)
    )


def _server(s: Section, base_dir: Path) -> ServerConfig | None:
    issuer = s.url("issuer", required=True)
    if issuer and issuer.endswith("/"):
        s.findings.error(
            s.at("issuer"), "must not end with '/' (it is compared exactly and URLs are built from it)"
        )
    audience = s.string("audience") or issuer
    keys = _signing_keys(s, base_dir)
    replay_store = s.string("replay_store", "memory") or "memory"
    store_problem = store_url_problem(replay_store)
    if store_problem:
        # Not echoed: a redis URL may carry a password.
        s.findings.error(s.at("replay_store"), store_problem)
    token_max_age = s.integer("token_max_age", 900, minimum=1, maximum=86400)
    leeway = s.integer("leeway", 60, minimum=0, maximum=600)
    rate_limits = _rate_limits(s)
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
    limits.finish()
    return RateLimits(per_identity=per_identity, per_client=per_client)


def _providers(s: Section) -> dict[str, ProviderConfig]:
    providers: dict[str, ProviderConfig] = {}
    issuers: dict[str, str] = {}
    for name in list(s.keys()):
        p = s.section(name)
        if not isinstance(name, str) or not PROVIDER_NAME.fullmatch(name):
            s.findings.error(p.path, "provider names use letters, digits, '.', '_' and '-'")
            continue
        issuer = p.url("issuer", required=True)
        kind = p.choice("type", tuple(SCHEMAS), required=True)
        jwks_uri = p.url("jwks_uri")
        ca_bundle = p.string("ca_bundle")
        if ca_bundle and not Path(ca_bundle).is_file():
            s.findings.error(p.at("ca_bundle"), f"{ca_bundle!r} is not a readable file")
        algorithms = p.string_list("algorithms", ("RS256",))
        for i, alg in enumerate(algorithms):
            if alg not in PROVIDER_ALGORITHMS:
                s.findings.error(
                    join(p.at("algorithms"), i),
                    f"{alg!r} is not allowed; use one of {', '.join(PROVIDER_ALGORITHMS)}",
                )
        p.finish()
        if issuer in issuers:
            s.findings.error(p.at("issuer"), f"the same issuer is already provider {issuers[issuer]!r}")
        if issuer and kind:
            issuers[issuer] = name
            providers[name] = ProviderConfig(
                name=name,
                issuer=issuer,
                type=kind,
                jwks_uri=jwks_uri,
                ca_bundle=ca_bundle,
                algorithms=algorithms,
            )
    if s.valid and not providers and not s.findings.errors:
        s.findings.error(s.path, "at least one provider is required")
    return providers


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
        r.finish()
        if cloud and settings is not None and rules:
            roles[name] = RoleConfig(name=name, cloud=cloud, settings=settings, rules=rules)
    return roles


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
        provider = rule.string("provider", required=True)
        if provider and provider not in providers:
            r.findings.error(rule.at("provider"), f"unknown provider {provider!r}")
            provider = None
        conditions = _conditions(
            rule.section("claims", required=True), providers[provider].schema if provider else None
        )
        rule.raw("description")
        rule.finish()
        if provider and conditions:
            rules.append(Rule(index=i, provider=provider, conditions=conditions))
    return tuple(rules) if len(rules) == len(raw) else ()


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
            conditions.append(compile_condition(claim, raw, schema))
        except ValueError as exc:
            c.findings.error(c.at(claim), str(exc))
    return tuple(conditions) if schema is not None and len(conditions) == len(list(c.keys())) else ()
