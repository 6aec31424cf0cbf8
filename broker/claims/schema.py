"""What a claim schema is, and how a claim is found in a token: the shared core of every table.

A `ClaimSchema` is data: adding a CI provider means writing one table (a module of this package),
not new control flow. The schema drives how claim values are normalised before matching, which
claims `ci-broker check` treats as identities, tenants or attacker-steerable, which claims a token
must carry, and which claims the audit log, the broker's assertion and session names carry.

Claim names in rules, tables and audit fields are paths. A name is first looked up as it is; a
name with dots that is not a key of the token is resolved greedily, segment run by segment run,
against the token's own keys (CONTRACT section 11): `kubernetes.io.namespace` is
`claims["kubernetes.io"]["namespace"]`, because `kubernetes.io` is the longest run of leading
segments that is a key. A key that itself contains dots is therefore written as it is, and the
longest key present always wins, at every level; there is no backtracking, so each name resolves
to at most one value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

# Every JWT registered claim a provider might send. `iss`, `aud`, `exp` and `iat` are required of
# every token by the verifier itself; `sub`, `jti` and `nbf` only where a schema says so.
REGISTERED: Final = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})
# The broker's provider-neutral CI context: in its assertion, in session names, and (repository_id)
# the identity rate limits count against.
NEUTRAL_NAMES: Final = ("repository", "repository_id", "ref", "run_id", "sha")
# A claim path: dot-separated, non-empty segments of printable characters other than whitespace.
CLAIM_PATH: Final = re.compile(r"[^\s.]+(?:\.[^\s.]+)*")


class _Absent:
    """The value of a claim the token does not carry (distinct from a JSON null, which it may)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()


def resolve(claims: Mapping[str, Any], name: str) -> Any:
    """The value `name` denotes in `claims` (see the module docstring), or ABSENT.

    A JSON null is a value (None): callers decide what it means, and no condition matches it.
    """
    if name in claims:
        return claims[name]
    if "." not in name:
        return ABSENT
    parts = name.split(".")
    node: Any = claims
    start = 0
    while start < len(parts):
        if not isinstance(node, Mapping):
            return ABSENT
        for end in range(len(parts), start, -1):
            key = ".".join(parts[start:end])
            if key in node:
                node, start = node[key], end
                break
        else:
            return ABSENT
    return node


def claim_text(value: object) -> str | None:
    """A claim as the text conditions compare against, or None if it is not a scalar (or null).

    Numbers and booleans compare as their JSON text (`42`, `true`), per the contract.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return None


def _lower_repo_of_workflow_ref(value: str) -> str:
    """`Owner/Repo/.github/workflows/x.yml@refs/heads/Main` -> owner/repo lowered, rest kept.

    The owner and repository are case-insensitive on GitHub; the path and ref after them are not.
    """
    parts = value.split("/", 2)
    if len(parts) < 3:
        return value
    return f"{parts[0].lower()}/{parts[1].lower()}/{parts[2]}"


@dataclass(frozen=True)
class Untrusted:
    """Where a provider's tokens say that a job runs code nobody trusted has reviewed.

    `samples` are values of `claim` that mark such jobs (GitHub's `pull_request`, an SSH rerun's
    `true`): `ci-broker check` warns when a rule has no condition on `claim`, or one that admits a
    sample. `why` says in a few words what such a job is, for that warning.
    """

    claim: str
    samples: frozenset[str]
    why: str


@dataclass(frozen=True)
class ClaimSchema:
    type: str
    # The documentation the table was written from: cited in `check` messages and the docs.
    source: str
    # Claims a token of this type must carry with a non-null value, beyond iss, aud, exp and iat
    # (which every token needs). `sub` and `jti` are here only where the provider always sends them.
    required: frozenset[str]
    # Every claim the provider documents (paths for nested ones); a rule on anything else earns a
    # warning, or for `oidc` providers, whose schema is the operator's own, an error.
    known: frozenset[str]
    # Ids that survive renames and are never reused: what a rule should bind to.
    immutable_ids: frozenset[str]
    # Claims the person triggering the job chooses (branch names, step keys, actor). A rule made of
    # these alone is refused: anyone who can push could satisfy it.
    user_controlled: frozenset[str]
    # The neutral context names (NEUTRAL_NAMES) mapped to this provider's claims (paths allowed).
    neutral: Mapping[str, str]
    # Non-secret claims copied into audit events, under their path names.
    audited: tuple[str, ...]
    untrusted: Untrusted | None = None
    # For issuers shared by many tenants (every Buildkite organization signs with one issuer): an
    # allow rule must pin one of these claims to exact values, or `check` and `serve` refuse it.
    # Each is a tenant's immutable id, or an id inside one tenant that no other tenant can carry.
    tenant_claims: tuple[str, ...] = ()
    tenant_label: str = ""  # "Buildkite organization": what one tenant is called, for messages
    # Names the provider treats case-insensitively: compared lowered, patterns matched IGNORECASE.
    case_insensitive: frozenset[str] = frozenset()
    # Workflow refs: `owner/repo/` is case-insensitive, the path and branch after it are not.
    repo_prefixed: frozenset[str] = frozenset()
    # Claims whose value is a list of strings (CircleCI's context ids): a condition holds when it
    # holds for any element. Any other list or object never matches.
    list_claims: frozenset[str] = frozenset()
    # Paths whose values are JSON objects holding further claims (Kubernetes' `kubernetes.io`):
    # where a dotted name splits into nested keys, for building example claims (`nest`).
    objects: frozenset[str] = frozenset()
    # Claim names made up at the job's request (Buildkite's `agent_tag:NAME`): known by prefix.
    known_prefixes: tuple[str, ...] = ()
    # Whether `known` is the operator's own declaration (`oidc`): a rule on anything else is an error.
    declared: bool = False

    def __post_init__(self) -> None:
        # Audit events and session names rely on both; every CI's tokens carry a subject.
        missing = [n for n in NEUTRAL_NAMES[:2] if n not in self.neutral]
        if missing:
            raise ValueError(f"{self.type}: the neutral context needs {missing}")
        if "sub" not in self.required:
            raise ValueError(f"{self.type}: sub must be required")

    def knows(self, claim: str) -> bool:
        return claim in self.known or claim.startswith(self.known_prefixes)

    def identity(self, claims: Mapping[str, Any]) -> str | None:
        """The text of the token's neutral repository id (else its repository): what rate limits
        count one CI identity by. None when the token carries neither as a scalar."""
        for name in ("repository_id", "repository"):
            text = claim_text(resolve(claims, self.neutral[name]))
            if text is not None:
                return text
        return None

    def normalize(self, claim: str, value: str) -> str:
        if claim in self.case_insensitive:
            return value.lower()
        if claim in self.repo_prefixed:
            return _lower_repo_of_workflow_ref(value)
        return value

    def audit_claims(self, claims: Mapping[str, Any]) -> dict[str, Any]:
        """The audited claims the token carries, by path name (nulls included: they are facts)."""
        out: dict[str, Any] = {}
        for name in self.audited:
            if name in claims:
                out[name] = claims[name]
            elif "." in name:
                value = resolve(claims, name)
                if value is not ABSENT:
                    out[name] = value
        return out

    def nest(self, flat: Mapping[str, Any]) -> dict[str, Any]:
        """A claims set with each path placed where `resolve` finds it: `{"kubernetes.io.namespace":
        "ci"}` becomes `{"kubernetes.io": {"namespace": "ci"}}`. For examples and tests."""
        out: dict[str, Any] = {}
        for path, value in flat.items():
            *parents, last = self.keys_of(path)
            node = out
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
        return out

    def keys_of(self, path: str) -> list[str]:
        """The token keys a path walks through: the longest object path it extends, then the rest."""
        parent = max((o for o in self.objects if path.startswith(o + ".")), key=len, default=None)
        if parent is None:
            return [path]
        return [*self.keys_of(parent), path[len(parent) + 1 :]]
