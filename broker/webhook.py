"""The alert webhook (`server.alerts.webhook`): a JSON POST per alert, sent off the request path.

The body is `{"text": ..., "alert": {...}}`: `text` is one line a Slack (or Mattermost, Teams
workflow, Google Chat) incoming webhook shows as it is; `alert` is the alert's audit event for
anything that wants the fields. Alerts carry identity fields and counts, never a token or a
credential; the webhook URL (which for Slack is itself a secret) is never logged, only its host.

Delivery (`broker.background` for the queue's promises):

- the queue holds up to `QUEUE_CAPACITY` alerts per worker; an alert that finds it full is dropped
  and counted (`ci_broker_background_dropped_total{queue="webhook", reason="queue_full"}`);
- each alert is tried up to `MAX_ATTEMPTS` times: timeouts, connection errors, 408, 429 and 5xx are
  retried after 0.5 s, 1 s, 2 s, ... (at most 30 s, with jitter), about a minute in all; then it is
  dropped (`reason="gave_up"`). Any other answer is final: 2xx delivered, other 4xx dropped at once
  (`reason="rejected"`: a wrong or revoked URL does not get better by retrying);
- on shutdown the sender has `grace` seconds to finish, then the rest is counted as dropped.

Every alert is also an audit event and a counter increment, written before the webhook is tried:
the webhook is a notification, not the record.
"""

from __future__ import annotations

import logging
import random
from typing import Any
from urllib.parse import urlsplit

from broker import metrics
from broker.background import BackgroundQueue

log = logging.getLogger("broker.webhook")

QUEUE_CAPACITY = 1000
MAX_ATTEMPTS = 8
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
RETRIED_STATUSES = frozenset({408, 429})


def slack_escape(text: str) -> str:
    """Slack reads `<...>` as links and mentions (`<!channel>`): claim text must not ping anyone."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(alert: dict[str, Any]) -> dict[str, Any]:
    text = f"ci-broker {alert['severity']} alert {alert['alert']}: {alert['summary']}"
    return {"text": slack_escape(text), "alert": alert}


class WebhookSender:
    def __init__(
        self,
        url: str,
        timeout: float,
        *,
        capacity: int = QUEUE_CAPACITY,
        max_attempts: int = MAX_ATTEMPTS,
        first_backoff: float = FIRST_BACKOFF,
        grace: float = 2.0,
    ) -> None:
        self._url = url
        self.host = urlsplit(url).hostname or "?"
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.first_backoff = first_backoff
        self._session: Any = None
        self.queue: BackgroundQueue[dict[str, Any]] = BackgroundQueue(
            "webhook", lambda alerts: self._deliver(alerts[0]), capacity=capacity, grace=grace
        )

    def start(self) -> None:
        self.queue.start()

    def send(self, alert: dict[str, Any]) -> bool:
        """Queue one alert; never blocks. False if it was dropped (the queue is full)."""
        return self.queue.offer(alert)

    def _deliver(self, alert: dict[str, Any]) -> None:
        import requests

        if self._session is None:  # made in the sender's own thread, in the worker that uses it
            self._session = requests.Session()
        body = payload(alert)
        problem = "not sent"
        for attempt in range(self.max_attempts):
            try:
                response = self._session.post(self._url, json=body, timeout=self.timeout)
                status: int | None = response.status_code
                response.close()
            except requests.RequestException as exc:
                status = None
                problem = type(exc).__name__
            if status is not None and 200 <= status < 300:
                metrics.webhook_attempt(True)
                return
            metrics.webhook_attempt(False)
            if status is not None and status not in RETRIED_STATUSES and status < 500:
                log.error(
                    "alert webhook at %s rejected an alert with HTTP %d; not retried", self.host, status
                )
                self.queue.dropped("rejected")
                return
            problem = f"HTTP {status}" if status is not None else problem
            if attempt + 1 < self.max_attempts:
                delay = min(MAX_BACKOFF, self.first_backoff * 2**attempt) * random.uniform(0.8, 1.2)
                if not self.queue.sleep(delay):
                    self.queue.dropped("shutdown")
                    return
        log.error(
            "alert webhook at %s failed %d times (%s); alert %s dropped",
            self.host,
            self.max_attempts,
            problem,
            alert.get("alert"),
        )
        self.queue.dropped("gave_up")

    def close(self) -> None:
        self.queue.close()
        if self._session is not None:
            self._session.close()
