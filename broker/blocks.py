"""Runtime blocks (contract section 9): stop an identity at once, on every replica, without a deploy.

A block names a provider, one or more claims (`NAME=VALUE`, compared exactly as a rule's string
condition is, so case-insensitive claims stay case-insensitive), optionally one role, a reason and
optionally an expiry. `ci-broker block` writes it to the shared store (`broker.blockstore`).

Every broker process keeps a copy of the blocks in memory (`BlockList`), refreshed by a background
thread that polls the store's version every `POLL_INTERVAL` and reloads the records when it
changed. The request path reads only that copy: no store round trip per exchange. The copy is
trusted for `MAX_STALENESS` seconds after the poll that produced it began; past that (the store
is down, the thread stalled) every check fails closed with 503 rather than answering "not
blocked". A new block or an unblock therefore takes effect on every replica within
`MAX_STALENESS` seconds, usually within one poll interval.

A stored record is read strictly: a record with a format version or fields this broker does not
know (written by a newer broker) cannot be matched safely, so it is reported loudly and the whole
copy is refused, which turns every check into a 503 until the record is removed or the broker
upgraded. Ignoring it could let the identity it blocks through.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import re
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker import metrics
from broker.blockstore import BlockStore, BlockStoreError
from broker.claims import ClaimSchema, claim_text
from broker.errors import Blocked, Unavailable
from broker.policy import Condition, compile_condition

if TYPE_CHECKING:
    from broker.config import Config, ProviderConfig

log = logging.getLogger("broker.blocks")

FORMAT_VERSION = 1
RECORD_FIELDS = frozenset(
    {"v", "id", "provider", "claims", "role", "reason", "created_at", "expires_at", "created_by"}
)
POLL_INTERVAL = 0.25
MAX_STALENESS = 2.0
MAX_CLAIMS = 20
MAX_VALUE_CHARS = 1000
MAX_REASON_CHARS = 500
MAX_FOR_SECONDS = 366 * 86400
BLOCK_ID = re.compile(r"blk-[0-9a-f]{12}")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


class BlockError(ValueError):
    """A block that cannot be made from the operator's input, with the reason in plain words."""


class BlockFormatError(ValueError):
    """A stored record this broker cannot read; never skipped, since it may block someone."""


@dataclass(frozen=True)
class Block:
    id: str
    provider: str
    claims: dict[str, str]
    role: str | None
    reason: str
    created_at: float
    expires_at: float | None = None
    created_by: str | None = None
    # The claims compiled as exact conditions against the provider's schema; empty when this
    # broker's config has no such provider (then no token it accepts can match anyway).
    conditions: tuple[Condition, ...] = field(default=(), compare=False, repr=False)

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def matches(self, claims: Mapping[str, Any], role: str, schema: ClaimSchema, now: float) -> bool:
        return (
            bool(self.conditions)
            and (self.role is None or self.role == role)
            and self.active(now)
            and all(c.holds(claims, schema) for c in self.conditions)
        )

    def record(self) -> str:
        """The stored form: versioned JSON with every field present."""
        return json.dumps(
            {
                "v": FORMAT_VERSION,
                "id": self.id,
                "provider": self.provider,
                "claims": self.claims,
                "role": self.role,
                "reason": self.reason,
                "created_at": self.created_at,
                "expires_at": self.expires_at,
                "created_by": self.created_by,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    def public(self) -> dict[str, Any]:
        """What `ci-broker blocks --json` prints for it."""
        return {
            "id": self.id,
            "provider": self.provider,
            "claims": self.claims,
            "role": self.role,
            "reason": self.reason,
            "created_at": _rfc3339(self.created_at),
            "expires_at": _rfc3339(self.expires_at) if self.expires_at is not None else None,
            "created_by": self.created_by,
        }

    def describe(self) -> str:
        claims = ", ".join(f"{k}={v}" for k, v in self.claims.items())
        role = f"role {self.role}" if self.role else "every role"
        until = f"until {_rfc3339(self.expires_at)}" if self.expires_at is not None else "until unblocked"
        return f"{self.id}: {self.provider} {claims}; {role}; {until}; reason: {self.reason}"


def _rfc3339(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- making a block from the operator's input -----------------------------------------------------


def parse_duration(text: str) -> int:
    """`--for`: seconds as `90`, `90s`, `15m`, `2h`, `7d`, or combined largest first (`1h30m`)."""
    match = _DURATION.fullmatch(text.strip()) if text.strip() else None
    if match is None or not any(match.groups()):
        raise BlockError(f"--for {text!r} is not a duration: use 90s, 15m, 2h, 7d or 1h30m")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total < 1:
        raise BlockError(f"--for {text!r} must be at least one second")
    if total > MAX_FOR_SECONDS:
        raise BlockError(f"--for {text!r} is more than 366 days; leave --for out for a block until unblocked")
    return total


def new_block(
    config: Config,
    *,
    provider: str,
    claims: list[str],
    role: str | None,
    reason: str,
    duration: str | None,
    now: float | None = None,
) -> Block:
    """A block from `ci-broker block`'s arguments, checked against the config; raises BlockError."""
    known, parsed = identity_claims(config, provider, claims, what="a block")
    if role is not None and role not in config.roles:
        raise BlockError(f"--role {role!r} is not a configured role (a typo would match nobody)")
    reason = reason.strip()
    if not reason:
        raise BlockError("--reason must not be empty: it is what the audit log and `blocks` show")
    if len(reason) > MAX_REASON_CHARS:
        raise BlockError(f"--reason is longer than {MAX_REASON_CHARS} characters")
    seconds = parse_duration(duration) if duration is not None else None
    now = time.time() if now is None else now
    block = Block(
        id=f"blk-{secrets.token_hex(6)}",
        provider=provider,
        claims=parsed,
        role=role,
        reason=reason,
        created_at=now,
        expires_at=now + seconds if seconds is not None else None,
        created_by=operator(),
    )
    return _compiled(block, known.schema)


def identity_claims(
    config: Config, provider: str, claims: list[str], *, what: str
) -> tuple[ProviderConfig, dict[str, str]]:
    """`--provider P --claim NAME=VALUE ...` checked against the config: the identity `block` and
    `revoke` both name, as the provider and its exact claim values; raises BlockError. `what` is
    the thing the claims pick out, for the error that there are none."""
    known = config.providers.get(provider)
    if known is None:
        names = ", ".join(sorted(config.providers)) or "none"
        raise BlockError(f"--provider {provider!r} is not a configured provider (configured: {names})")
    if not claims:
        raise BlockError(f"at least one --claim NAME=VALUE is required: {what} names who it stops")
    if len(claims) > MAX_CLAIMS:
        raise BlockError(f"at most {MAX_CLAIMS} --claim conditions")
    schema = known.schema
    parsed: dict[str, str] = {}
    for item in claims:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value:
            raise BlockError(f"--claim {item[:80]!r} must be NAME=VALUE with both parts non-empty")
        if name not in schema.known:
            raise BlockError(
                f"--claim {name!r} is not a claim {schema.type} tokens carry (a typo would match nobody)"
            )
        if name in parsed:
            raise BlockError(f"--claim {name!r} is given twice; one value per claim")
        if len(value) > MAX_VALUE_CHARS:
            raise BlockError(f"--claim {name!r}: the value is longer than {MAX_VALUE_CHARS} characters")
        parsed[name] = value
    return known, parsed


def operator() -> str | None:
    """Who runs this command: user@host, recorded with what an operator changes."""
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"[:200]
    except Exception:  # no user name to be had (a container with an arbitrary uid): not an error
        return None


def _compiled(block: Block, schema: ClaimSchema | None) -> Block:
    if schema is None:
        return block
    return replace(block, conditions=tuple(compile_condition(n, v, schema) for n, v in block.claims.items()))


# -- reading stored records -----------------------------------------------------------------------


def parse_record(block_id: str, text: str, config: Config) -> Block:
    """A stored record as a Block; raises BlockFormatError for anything this broker cannot read."""
    try:
        data = json.loads(text)
    except ValueError:
        raise BlockFormatError(f"block {block_id[:40]!r}: the record is not JSON") from None
    if not isinstance(data, dict):
        raise BlockFormatError(f"block {block_id[:40]!r}: the record is not a JSON object")
    version = data.get("v")
    unknown = sorted(str(k)[:40] for k in set(data) - RECORD_FIELDS)
    if version != FORMAT_VERSION or unknown:
        what = f"format version {version!r}" if version != FORMAT_VERSION else f"fields {', '.join(unknown)}"
        raise BlockFormatError(
            f"block {block_id[:40]!r} has {what}, which this broker does not know (written by a newer "
            "ci-broker?). Refusing every exchange rather than ignoring a block: upgrade this broker, "
            f"or remove the block with `ci-broker unblock {block_id[:40]}`"
        )
    missing = sorted(RECORD_FIELDS - set(data))
    claims = data.get("claims")
    if (
        missing
        or data.get("id") != block_id
        or not isinstance(data["provider"], str)
        or not isinstance(claims, dict)
        or not claims
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in claims.items())
        or not (data["role"] is None or isinstance(data["role"], str))
        or not isinstance(data["reason"], str)
        or not _is_time(data["created_at"])
        or not (data["expires_at"] is None or _is_time(data["expires_at"]))
        or not (data["created_by"] is None or isinstance(data["created_by"], str))
    ):
        raise BlockFormatError(f"block {block_id[:40]!r}: the record is malformed")
    provider = config.providers.get(data["provider"])
    block = Block(
        id=block_id,
        provider=data["provider"],
        claims=dict(claims),
        role=data["role"],
        reason=data["reason"],
        created_at=float(data["created_at"]),
        expires_at=float(data["expires_at"]) if data["expires_at"] is not None else None,
        created_by=data["created_by"],
    )
    return _compiled(block, provider.schema if provider is not None else None)


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_blocks(records: Mapping[str, str], config: Config) -> list[Block]:
    """Every stored block, oldest first; raises BlockFormatError on the first unreadable record."""
    return sorted((parse_record(i, text, config) for i, text in records.items()), key=lambda b: b.created_at)


# -- what the request path checks -----------------------------------------------------------------


# provider -> claim name -> normalised value -> the blocks whose first condition wants that value
_Index = dict[str, dict[str, dict[str, tuple[Block, ...]]]]


@dataclass(frozen=True)
class _View:
    """The blocks as the request path reads them: indexed on one exact claim each, so a check costs
    a dictionary lookup per claim name in use, not a pass over every block."""

    index: _Index
    blocks: tuple[Block, ...]
    as_of: float  # time.monotonic() when the poll that produced it began
    problem: str | None = None  # why no check can be answered (an unreadable record)


def _indexed(blocks: list[Block]) -> _Index:
    index: dict[str, dict[str, dict[str, list[Block]]]] = {}
    for block in blocks:
        if block.conditions:  # none when this config has no such provider: nothing to match
            first = block.conditions[0]
            index.setdefault(block.provider, {}).setdefault(first.claim, {}).setdefault(
                first.values[0], []
            ).append(block)
    return {
        p: {c: {v: tuple(b) for v, b in values.items()} for c, values in claims.items()}
        for p, claims in index.items()
    }


class BlockList:
    """The blocks this process enforces: a copy of the store's, kept fresh by a background thread.

    `refuse_if_blocked` is the one check the exchange (and a session's refresh) calls. With the
    `memory` store there is no store to poll and no way to write a block, so the list is empty
    and always current.
    """

    def __init__(
        self,
        config: Config,
        store: BlockStore | None,
        *,
        poll_interval: float = POLL_INTERVAL,
        max_staleness: float = MAX_STALENESS,
    ) -> None:
        self.config = config
        self.store = store
        self.poll_interval = poll_interval
        self.max_staleness = max_staleness if store is not None else math.inf
        self._view = _View({}, (), time.monotonic())
        self._version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def refuse_if_blocked(self, provider: ProviderConfig, claims: Mapping[str, Any], role: str) -> None:
        """Raise Blocked (403) if an active block matches this identity and role; Unavailable (503)
        if the copy of the blocks is older than `max_staleness` or unreadable."""
        view = self._view
        if view.problem is not None:
            raise Unavailable("the block list is unavailable", reason=view.problem)
        age = time.monotonic() - view.as_of
        if age > self.max_staleness:
            where = self.store.where if self.store is not None else "memory"
            raise Unavailable(
                "the block list is unavailable",
                reason=f"blocks not synchronised with {where} for {age:.1f}s (limit {self.max_staleness:g}s)",
            )
        by_claim = view.index.get(provider.name)
        if not by_claim:
            return
        schema = provider.schema
        for claim, by_value in by_claim.items():
            text = claim_text(claims.get(claim))
            if text is None:
                continue
            for block in by_value.get(schema.normalize(claim, text), ()):
                if block.matches(claims, role, schema, time.time()):
                    raise Blocked(block.id, block.reason)

    # -- keeping the copy fresh -------------------------------------------------------------------

    def start(self) -> None:
        """Load once now (so a new worker does not answer 503 until its first poll), then poll in a
        thread of this process. Called in each worker after the fork."""
        if self.store is None or self._thread is not None:
            return
        self.poll()
        self._thread = threading.Thread(target=self._run, name="ci-broker-blocks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
            except Exception:  # the copy then goes stale and checks fail closed; keep polling
                log.exception("block list poll failed unexpectedly")

    def poll(self) -> None:
        """One round: read the version; reload the records if it changed. Never raises for the
        store being down (the copy just ages)."""
        assert self.store is not None
        began = time.monotonic()
        try:
            version = self.store.version()
            if version == self._version:
                self._view = replace(self._view, as_of=began)
            else:
                version, records = self.store.snapshot()
                self._load(version, records, began)
        except BlockStoreError as exc:
            if not self._failing:
                log.warning(
                    "block store unreachable (%s): exchanges fail closed after %gs", exc, self.max_staleness
                )
            self._failing = True
            return
        if self._failing:
            log.info("block store %s reachable again", self.store.where)
            self._failing = False
        now = time.time()
        metrics.blocks_synced(sum(b.active(now) for b in self._view.blocks))

    def _load(self, version: str, records: Mapping[str, str], began: float) -> None:
        if self._version and version.partition(":")[0] != self._version.partition(":")[0]:
            log.warning(
                "the block store was emptied since it was last read (a redis restart without "
                "persistence?): blocks may have been lost; check `ci-broker blocks` and re-apply"
            )
        self._version = version
        try:
            blocks = read_blocks(records, self.config)
        except BlockFormatError as exc:
            log.error("%s", exc)
            self._view = _View({}, (), began, problem=str(exc))
            return
        self._view = _View(_indexed(blocks), tuple(blocks), began)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.store is not None:
            self.store.close()
