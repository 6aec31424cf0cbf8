"""How the GCP and Azure back ends talk HTTP: short timeouts, bounded retries, an optional CA.

Left to their defaults the SDKs would keep a CI job waiting for minutes (google-auth waits 120 s
per call, azure-core 300 s with up to 10 retries) and would sleep for as long as any Retry-After
header asks. A job is better served by a 502 within seconds, so every upstream call here gets a
few seconds per attempt, a couple of retries on what is worth retrying (connection errors,
timeouts, 429 and 5xx), and at most a short honoured Retry-After.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from broker.errors import UpstreamError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class HttpPolicy:
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    retries: int = 2  # after the first attempt, so at most three calls per upstream step
    backoff: float = 0.25  # seconds before the second retry, doubling after
    max_backoff: float = 2.0
    max_retry_after: float = 2.0  # a larger Retry-After is cut to this


DEFAULT_POLICY = HttpPolicy()


def verify_setting(ca_bundle: str | None) -> str | bool:
    """What `requests` should verify TLS with. A path is passed per request on purpose: a
    session-level `verify` loses to REQUESTS_CA_BUNDLE in the environment."""
    return ca_bundle if ca_bundle else True


def urllib3_retry(policy: HttpPolicy) -> Any:
    """A urllib3 Retry for POSTs to token endpoints: re-sending an exchange only mints another
    short-lived token, so a POST is as safe to retry as a GET here."""
    from urllib3.util.retry import Retry

    class CappedRetry(Retry):
        cap: float = policy.max_retry_after

        def get_retry_after(self, response: Any) -> float | None:
            value = super().get_retry_after(response)
            return None if value is None else min(value, self.cap)

    return CappedRetry(
        total=policy.retries,
        connect=policy.retries,
        read=policy.retries,
        status=policy.retries,
        other=0,
        redirect=0,
        allowed_methods=frozenset({"GET", "POST"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=policy.backoff,
        backoff_max=policy.max_backoff,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


# Connections kept per cloud endpoint: at least the threads a worker runs (`serve` defaults to 16),
# so concurrent exchanges reuse connections instead of each opening (and then discarding) one.
POOL_SIZE = 32


def requests_session(policy: HttpPolicy) -> Any:
    """A pooled session whose adapter retries per `policy`; shared by every role that uses it."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(max_retries=urllib3_retry(policy), pool_maxsize=POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


WITHHELD = "(message withheld: it echoed a credential)"


def echoes(text: str, secrets: Iterable[str | None]) -> bool:
    """Whether an upstream echoed one of `secrets` (the assertions sent to it) back into `text`.
    Ask before cutting `text` short: a truncated echo no longer matches."""
    return any(secret and secret in text for secret in secrets)


def first_line(text: str, limit: int = 300) -> str:
    return text.strip().splitlines()[0][:limit] if text.strip() else ""


def refusal(service: str, tag: str, code: str, description: str, sent: Iterable[str | None]) -> UpstreamError:
    """The 502 for a cloud's refusal: its error code and first line, never what was `sent` to it.

    `service` names the cloud endpoint for the caller ("AWS STS"); `tag` prefixes the audit reason
    ("gcp STS HTTP 400"). The echo check runs on the whole text, before anything is cut short.
    """
    if echoes(f"{code} {description}", sent):
        return UpstreamError(f"{service} refused the exchange: {WITHHELD}", reason=f"{tag}: {WITHHELD}")
    code = code[:100]
    return UpstreamError(
        f"{service} refused the exchange: {code}: {first_line(description)}",
        reason=f"{tag} {code}: {' '.join(description.split())[:500]}",
    )
