"""The CI issuers' signing keys: fetched off the request path, cached, refreshed with care.

Each provider's keys come from OIDC discovery (whose `issuer` must equal the configured one) or a
configured `jwks_uri`. A background thread keeps them fresh; a request fetches only when it names
a `kid` the cache lacks, at most once per cooldown, and concurrent misses share one fetch. A failed
fetch keeps the keys already cached; with none cached the broker answers 503, never a grant.
Fetches follow no redirects, time out, and read at most `MAX_DOCUMENT_BYTES`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from broker import metrics
from broker.errors import InvalidToken, Unavailable
from broker.schema import url_problem

log = logging.getLogger("broker.jwks")

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_KEYS = 100
# Which key types and curves each algorithm may use: a token's alg never picks a mismatched key.
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC"}
_EC_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class FetchError(Exception):
    pass


@dataclass(frozen=True)
class KeyCacheSettings:
    refresh_interval: float = 300.0  # background refresh; also how long a removed key lives on
    unknown_kid_cooldown: float = 30.0  # at most one refetch per this many seconds on a kid miss
    # With no keys at all, at most one fetch per this many seconds: during an outage a burst of
    # requests gets its 503 at once instead of queueing for one failing fetch after another.
    failure_cooldown: float = 2.0
    # Keys no fetch has confirmed for this long stop verifying: an issuer that withdrew a key
    # (after a compromise, say) must not be outvoted forever by whoever blocks the JWKS fetch.
    max_key_age: float = 24 * 3600.0
    connect_timeout: float = 3.0
    read_timeout: float = 5.0


@dataclass(frozen=True)
class IssuerKey:
    kid: str
    kty: str
    alg: str | None
    crv: str | None
    key: Any

    def usable_for(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        if _KEY_TYPE.get(alg[:2]) != self.kty:
            return False
        return self.kty != "EC" or _EC_CURVE.get(alg) == self.crv


def parse_jwks(document: Any) -> dict[str, IssuerKey]:
    """Usable signing keys by kid; keys we cannot use (enc, oct, no kid) are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise FetchError("JWKS is not an object with a keys list")
    keys: dict[str, IssuerKey] = {}
    for jwk in document["keys"][:MAX_KEYS]:
        if not isinstance(jwk, dict):
            continue
        kid, kty, use = jwk.get("kid"), jwk.get("kty"), jwk.get("use", "sig")
        if not isinstance(kid, str) or not kid or use != "sig" or kty not in ("RSA", "EC"):
            continue
        try:
            key = (RSAAlgorithm if kty == "RSA" else ECAlgorithm).from_jwk(jwk)
        except Exception:
            log.warning("skipping unparsable JWKS key %r", kid[:64])
            continue
        if hasattr(key, "private_numbers"):  # a JWKS must never hold a private key; ignore it
            continue
        if kty == "RSA" and key.key_size < 2048:
            continue
        alg = jwk.get("alg") if isinstance(jwk.get("alg"), str) else None
        keys[kid] = IssuerKey(kid=kid, kty=kty, alg=alg, crv=jwk.get("crv"), key=key)
    if not keys:
        raise FetchError("JWKS holds no usable signing key")
    return keys


class KeyCache:
    """One provider's keys. Thread-safe; `get` is what the request path calls."""

    def __init__(
        self,
        issuer: str,
        *,
        jwks_uri: str | None = None,
        ca_bundle: str | None = None,
        settings: KeyCacheSettings = KeyCacheSettings(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.configured_jwks_uri = jwks_uri
        self.settings = settings
        self.clock = clock
        self._verify: str | bool = ca_bundle or True
        self._session = requests.Session()
        self._keys: dict[str, IssuerKey] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._fetch_lock = threading.Lock()
        self.fetch_count = 0  # successful and failed attempts, for tests and metrics
        self.last_error: str | None = None

    # -- the request path -------------------------------------------------------------------
    def get(self, kid: str, alg: str) -> IssuerKey:
        key = self._keys.get(kid)
        if key is None:
            self._refresh_on_miss(kid)
            key = self._keys.get(kid)
        if (
            key is not None
            and self._fetched_at is not None
            and self.clock() - self._fetched_at > self.settings.max_key_age
        ):
            raise Unavailable(
                "the issuer's signing keys are unavailable",
                reason=f"keys for {self.issuer} unconfirmed for over "
                f"{int(self.settings.max_key_age)}s: {self.last_error}",
            )
        if key is None:
            if not self._keys:
                raise Unavailable(
                    "the issuer's signing keys are unavailable",
                    reason=f"no keys cached for {self.issuer}: {self.last_error}",
                )
            raise InvalidToken(
                "token signed with an unknown key", reason=f"kid {kid[:64]!r} not in the issuer's JWKS"
            )
        if not key.usable_for(alg):
            raise InvalidToken(
                "token algorithm does not match its key", reason=f"alg {alg} not usable with key {kid[:64]!r}"
            )
        return key

    def _refresh_on_miss(self, kid: str) -> None:
        # Only one thread fetches; the others wait for it (bounded by the fetch timeouts) and
        # then look again. A flood of made-up kids costs one fetch per cooldown, not one each.
        timeout = self.settings.connect_timeout + self.settings.read_timeout + 1
        if not self._fetch_lock.acquire(timeout=timeout):
            return
        try:
            if kid in self._keys:
                return
            now = self.clock()
            cooldown = self.settings.unknown_kid_cooldown if self._keys else self.settings.failure_cooldown
            if self._last_attempt is not None and now - self._last_attempt < cooldown:
                return
            self._fetch_locked()
        finally:
            self._fetch_lock.release()

    # -- background refresh ---------------------------------------------------------------------
    def refresh(self) -> bool:
        with self._fetch_lock:
            return self._fetch_locked()

    @property
    def age(self) -> float | None:
        return None if self._fetched_at is None else self.clock() - self._fetched_at

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    def _fetch_locked(self) -> bool:
        self._last_attempt = self.clock()
        self.fetch_count += 1
        try:
            keys = parse_jwks(self._get_json(self._jwks_uri()))
        except FetchError as exc:
            self.last_error = str(exc)
            metrics.jwks_fetch(self.issuer, ok=False)
            log.warning(
                "JWKS refresh for %s failed: %s (keeping %d cached keys)", self.issuer, exc, len(self._keys)
            )
            return False
        self._keys = keys
        self._fetched_at = self.clock()
        self.last_error = None
        metrics.jwks_fetch(self.issuer, ok=True)
        return True

    def _jwks_uri(self) -> str:
        if self.configured_jwks_uri:
            return self.configured_jwks_uri
        document = self._get_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise FetchError("discovery document's issuer does not equal the configured issuer")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or url_problem(uri):
            raise FetchError("discovery document has no acceptable jwks_uri")
        return uri

    def _get_json(self, url: str) -> Any:
        return fetch_json(
            self._session,
            url,
            connect_timeout=self.settings.connect_timeout,
            read_timeout=self.settings.read_timeout,
            verify=self._verify,
        )


def fetch_json(
    session: requests.Session,
    url: str,
    *,
    connect_timeout: float,
    read_timeout: float,
    verify: str | bool = True,
) -> Any:
    """GET a JSON document from an issuer: no redirects, bounded size and total time.

    The timeouts bound each socket operation; the deadline bounds the whole fetch, so an endpoint
    that trickles its body a byte at a time cannot hold the caller for long. Raises FetchError.
    """
    deadline = time.monotonic() + connect_timeout + read_timeout
    try:
        with session.get(
            url,
            timeout=(connect_timeout, read_timeout),
            allow_redirects=False,
            stream=True,
            verify=verify,
            headers={"Accept": "application/json"},
        ) as response:
            if response.status_code != 200:
                raise FetchError(f"GET {url} answered {response.status_code}")
            body = _read_bounded(response.raw, deadline, url)
    # Reading the raw body raises urllib3's own errors (a read timeout mid-body), not requests'.
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise FetchError(f"GET {url} failed: {type(exc).__name__}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise FetchError(f"GET {url} did not return JSON") from None


def _read_bounded(raw: Any, deadline: float, url: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise FetchError(f"GET {url} took too long to send its body")
        chunk = raw.read1(64 * 1024, decode_content=True)  # returns as soon as any data is there
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise FetchError(f"GET {url} returned more than {MAX_DOCUMENT_BYTES} bytes")
        chunks.append(chunk)


class KeyRefresher:
    """A daemon thread that refreshes every cache before its keys go stale."""

    def __init__(self, caches: list[KeyCache], interval: float) -> None:
        self.caches = caches
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jwks-refresher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            for cache in self.caches:
                if self._stop.is_set():
                    return
                try:
                    cache.refresh()
                except Exception:
                    log.exception("JWKS refresh crashed for %s", cache.issuer)
            # Retry sooner while some issuer has no keys at all.
            wait = self.interval if all(c.has_keys for c in self.caches) else min(5.0, self.interval)
            self._stop.wait(wait)
