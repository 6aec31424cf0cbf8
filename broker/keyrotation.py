"""Signing-key rotation with no failed exchange: a gate to run before each deploy.

`server.signing_keys` lists keys in order: the first signs, all are published. A cloud verifies
an assertion against the JWKS it fetched and cached some time ago, so the rotation is three
deploys, each safe only once the previous one has been seen long enough:

1. publish: add the new key *second*. The old key still signs; the new one is only published.
   Wait until every cloud's cached copy of the JWKS includes it.
2. promote: move the new key *first*. It signs from now on; the old key stays published so the
   assertions it signed in the last few minutes still verify. Wait at least the assertion
   lifetime (5 minutes) plus the clouds' cache time.
3. retire: remove the old key.

Two mistakes break exchanges, and both are visible by comparing the config about to be deployed
with the JWKS the clouds see now (live JWKS order is config order, so its first key is the one
the running broker signs with): signing with a key that is not published yet, and unpublishing
the key the running broker signs with. `check` refuses both and names the step a config makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests

from broker.assertion import MAX_LIFETIME
from broker.config import ServerConfig
from broker.discovery import DISCOVERY_PATH
from broker.jwks import FetchError, fetch_json
from broker.schema import url_problem

# How long to leave between deploys when the clouds' JWKS cache times are not known.
DEFAULT_WAIT = 3600


@dataclass(frozen=True)
class Plan:
    step: str  # in-sync | publish | promote | retire | several | unsafe | first-deploy
    safe: bool
    lines: tuple[str, ...]  # what the deploy changes, and the next step or the reason it is unsafe


def plan(config_kids: Sequence[str], live_kids: Sequence[str], wait: int = DEFAULT_WAIT) -> Plan:
    """What deploying a config with `config_kids` does to a broker now publishing `live_kids`."""
    new, live = list(config_kids), list(live_kids)
    if not live:
        return Plan("first-deploy", True, (f"nothing is published yet; {new[0]} will sign",))
    signer, next_signer = live[0], new[0]
    added = [k for k in new if k not in live]
    removed = [k for k in live if k not in new]
    problems = []
    if next_signer not in live:
        problems.append(
            f"unsafe: {next_signer} would sign before any cloud has seen it published; "
            "deploy it second in signing_keys first (step 1), then wait"
        )
    if signer not in new:
        problems.append(
            f"unsafe: {signer} signs on the running broker and would be unpublished while "
            "its assertions are still in flight; keep it (second) until step 2 has been "
            f"live for more than {MAX_LIFETIME} s plus the clouds' cache time"
        )
    if problems:
        return Plan("unsafe", False, tuple(problems))
    if new == live:
        lines = [f"in sync: {signer} signs" + (f"; {', '.join(live[1:])} published only" if live[1:] else "")]
        if len(live) == 1:
            lines.append("to rotate: `ci-broker keys rotate --config FILE --new-key PATH`")
        else:
            lines.append(
                "next: if the second key is the new one, promote it (move it first) once it "
                f"has been published for {wait} s; if it is the old one, retire it once the "
                f"promotion has been live for {MAX_LIFETIME + wait} s"
            )
        return Plan("in-sync", True, tuple(lines))
    steps = []
    if added:
        steps.append(
            (
                "publish",
                f"step 1, publish: {', '.join(added)} becomes published, not signing; "
                f"wait {wait} s (the clouds' JWKS caches) before promoting it",
            )
        )
    if next_signer != signer:
        steps.append(
            (
                "promote",
                f"step 2, promote: {next_signer} signs instead of {signer}, which stays "
                f"published; wait {MAX_LIFETIME + wait} s before retiring {signer}",
            )
        )
    if removed:
        steps.append(("retire", f"step 3, retire: {', '.join(removed)} is no longer published"))
    if not steps:  # same keys, only the order of the non-signing ones changed
        return Plan("in-sync", True, (f"no effective change: {signer} still signs",))
    return Plan(steps[0][0] if len(steps) == 1 else "several", True, tuple(line for _, line in steps))


def describe(server: ServerConfig) -> list[str]:
    return [
        f"{i + 1}. kid {k.kid}  {k.alg}  " + ("signs" if i == 0 else "published only")
        for i, k in enumerate(server.signing_keys)
    ]


def live_jwks_url(issuer: str, timeout: float = 5.0) -> str:
    """The jwks_uri of the published discovery document: the one the clouds will fetch."""
    document = _get_json(f"{issuer}/{DISCOVERY_PATH}", timeout)
    if not isinstance(document, dict):
        raise ValueError("the published discovery document is not a JSON object")
    uri = document.get("jwks_uri")
    if document.get("issuer") != issuer or not isinstance(uri, str) or url_problem(uri):
        raise ValueError("the published discovery document does not name this issuer and a usable jwks_uri")
    return uri


def live_kids(jwks_url: str, timeout: float = 5.0) -> list[str]:
    document = _get_json(jwks_url, timeout)
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError(f"{jwks_url} is not a JWKS")
    return [k["kid"] for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)]


def _get_json(url: str, timeout: float) -> Any:
    problem = url_problem(url)
    if problem:
        raise ValueError(f"{url}: {problem}")
    try:
        with requests.Session() as session:
            return fetch_json(session, url, connect_timeout=timeout, read_timeout=timeout)
    except FetchError as exc:
        raise ValueError(str(exc)) from None
