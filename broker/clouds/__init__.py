"""Cloud back ends: one small interface, one module per cloud.

A cloud kind parses its own role section (no SDK import needed for that, so `ci-broker check` and
start-up stay light) and builds a back end once at start-up, which holds the SDK client and turns
a granted role into credentials. Only clouds some role uses get their SDK imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from broker.schema import Section

# Signs the broker's assertion for this grant: (audience, extra claims) -> compact JWT.
MintAssertion = Callable[[str, Mapping[str, Any]], str]


@dataclass(frozen=True)
class Grant:
    """What the policy granted, handed to the cloud back end."""

    role: str
    provider: str
    claims: Mapping[str, Any]  # the verified CI token's claims
    context: Mapping[str, str]  # provider-neutral, non-secret CI context (repository, ref, run_id, ...)
    duration: int | None  # requested lifetime, already checked against the role's maximum
    mint_assertion: MintAssertion


class Assertions:
    """The broker's assertion for one grant, minted whenever the cloud's library asks for one.

    Every assertion minted is remembered, only so that an upstream error message echoing one is
    withheld rather than repeated. Serves as azure-identity's client-assertion callback (a call)
    and as google-auth's `identity_pool.SubjectTokenSupplier` (`get_subject_token`).
    """

    def __init__(self, grant: Grant, audience: str) -> None:
        self.grant = grant
        self.audience = audience
        self.minted: list[str] = []

    def __call__(self) -> str:
        assertion = self.grant.mint_assertion(self.audience, {})
        self.minted.append(assertion)
        return assertion

    def get_subject_token(self, context: Any, request: Any) -> str:
        return self()


@dataclass(frozen=True)
class Issued:
    expires_at: datetime
    credentials: dict[str, str]


class Backend(Protocol):
    def issue(self, grant: Grant) -> Issued: ...


class CloudKind(Protocol):
    def parse_settings(self, section: Section) -> Any: ...
    def max_duration(self, settings: Any) -> int | None: ...
    def min_duration(self, settings: Any) -> int: ...
    def build_backend(self, role: str, settings: Any, shared: dict[Any, Any]) -> Backend: ...


_MODULES = {"aws": "broker.clouds.aws", "gcp": "broker.clouds.gcp", "azure": "broker.clouds.azure"}
NAMES = tuple(_MODULES)


def kind(name: str) -> CloudKind:
    module = importlib.import_module(_MODULES[name])
    cloud_kind: CloudKind = module.KIND
    return cloud_kind
