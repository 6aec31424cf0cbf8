"""Alerts (contract section 9): each kind fires exactly when its threshold is crossed, not before.

Through the broker (in process, sqlite store) for what an exchange triggers; through `Alerts`
directly, with two detectors on one real redis, for "replicas count together". Every alert is an
audit event and a counter increment; the webhook is tests/test_webhook.py.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.alertconfig import AlertSettings, Bulk, Burst
from broker.alerts import KINDS, Alerts, client_network
from broker.audit import AuditEvent
from broker.config import ConfigError, build_config
from broker.hours import parse_hours
from broker.windows import MemoryWindows, RedisWindows, SqliteWindows
from tests.redis_support import redis_server_fixture


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    yield from redis_server_fixture(tmp_path_factory)


def alerts_of(events: list[dict[str, Any]], kind: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "alert" and (kind is None or e["alert"] == kind)]


def counted() -> dict[str, float]:
    """ci_broker_alerts_total by kind, from this process's registry."""
    from prometheus_client import REGISTRY

    return {
        s.labels["alert"]: s.value
        for family in REGISTRY.collect()
        if family.name == "ci_broker_alerts"
        for s in family.samples
        if s.name == "ci_broker_alerts_total"
    }


def configured(sandbox, tmp_path: Path, alerts: dict[str, Any], **role_hours: Any) -> dict[str, Any]:
    config = sandbox.config_dict()
    config["server"]["replay_store"] = f"sqlite:///{tmp_path / 'state.db'}"
    config["server"]["rate_limits"] = "off"
    config["server"]["alerts"] = alerts
    for role, hours in role_hours.items():
        config["roles"][role.replace("_", "-")]["hours"] = hours
    return config


def settle(app: Any) -> None:
    """Wait for the broker's background alert counting to catch up."""
    assert app.extensions["broker"].alerts.queue.flush(10)


OFF = {"denied_burst": "off", "bulk": "off", "new_source": "off"}


# -- denied_burst ---------------------------------------------------------------------------------


def test_denied_burst_fires_at_the_threshold_for_the_identity_and_the_client_and_not_before(
    sandbox, serve_config, tmp_path, audit_events
):
    app = serve_config(configured(sandbox, tmp_path, {**OFF, "denied_burst": {"count": 3, "window": 60}}))
    for _ in range(2):  # refused by the policy: a repository no rule grants
        assert sandbox.exchange(sandbox.github_token(repository_id="666")).status_code == 403
    settle(app)
    assert alerts_of(audit_events) == []
    assert sandbox.exchange(sandbox.github_token(repository_id="666")).status_code == 403
    settle(app)
    fired = alerts_of(audit_events, "denied_burst")
    assert sorted(a["details"]["scope"] for a in fired) == ["client", "identity"]
    identity = next(a for a in fired if a["details"]["scope"] == "identity")
    assert identity["identity"] == "github:666" and identity["severity"] == "medium"
    assert identity["details"] == {
        "scope": "identity",
        "count": 3,
        "threshold": 3,
        "window": 60,
        "of": "refusals",
    }
    third = [e for e in audit_events if e["type"] == "exchange"][-1]
    assert identity["request_id"] == third["request_id"]
    # One alert per burst: the fourth refusal within the window raises nothing new.
    assert sandbox.exchange(sandbox.github_token(repository_id="666")).status_code == 403
    settle(app)
    assert len(alerts_of(audit_events, "denied_burst")) == 2


def test_refusals_before_verification_count_for_the_client_only(
    sandbox, serve_config, tmp_path, audit_events
):
    app = serve_config(configured(sandbox, tmp_path, {**OFF, "denied_burst": {"count": 2, "window": 60}}))
    for _ in range(2):
        assert sandbox.exchange("not.a.token").status_code == 401
    settle(app)
    (fired,) = alerts_of(audit_events, "denied_burst")
    assert (
        fired["details"]["scope"] == "client" and fired["identity"] is None and fired["client"] == "127.0.0.1"
    )
    assert fired["role"] is None, "the role a caller names is not recorded before its token verifies"


def test_grants_do_not_count_as_denials(sandbox, serve_config, tmp_path, audit_events):
    app = serve_config(configured(sandbox, tmp_path, {**OFF, "denied_burst": {"count": 2, "window": 60}}))
    for _ in range(3):
        assert sandbox.exchange(sandbox.github_token()).status_code == 200
    settle(app)
    assert alerts_of(audit_events) == []


# -- bulk -----------------------------------------------------------------------------------------


def test_bulk_fires_at_the_count_of_credentials(sandbox, serve_config, tmp_path, audit_events):
    app = serve_config(
        configured(sandbox, tmp_path, {**OFF, "bulk": {"count": 3, "roles": 100, "window": 60}})
    )
    for _ in range(2):
        assert sandbox.exchange(sandbox.github_token()).status_code == 200
    settle(app)
    assert alerts_of(audit_events) == []
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    settle(app)
    (fired,) = alerts_of(audit_events, "bulk")
    assert fired["details"]["of"] == "credentials" and fired["details"]["count"] == 3
    assert fired["identity"] == "github:892734123" and fired["role"] == "deploy-prod"


def test_bulk_fires_at_the_count_of_distinct_roles(sandbox, serve_config, tmp_path, audit_events):
    app = serve_config(
        configured(sandbox, tmp_path, {**OFF, "bulk": {"count": 100, "roles": 2, "window": 60}})
    )
    for _ in range(3):  # the same role again and again is one role
        assert sandbox.exchange(sandbox.github_token()).status_code == 200
    settle(app)
    assert alerts_of(audit_events) == []
    assert sandbox.exchange(sandbox.github_token(), role="gcp-deploy").status_code == 200
    settle(app)
    (fired,) = alerts_of(audit_events, "bulk")
    assert fired["details"]["of"] == "distinct roles" and fired["details"]["count"] == 2


# -- new_source -----------------------------------------------------------------------------------


def exchange_from(sandbox, source: str, token: str) -> int:
    """An exchange sent from a given loopback address (Linux routes all of 127.0.0.0/8 to lo)."""
    host, port = sandbox.broker_url.split("//")[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        connection.request(
            "POST",
            "/v1/exchange",
            body=json.dumps({"role": "deploy-prod"}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        return connection.getresponse().status
    finally:
        connection.close()


def test_new_source_learns_the_first_network_then_fires_once_per_new_network(
    sandbox, serve_config, tmp_path, audit_events
):
    try:
        socket.create_connection(("127.0.0.1", sandbox.broker_port), source_address=("127.0.1.1", 0)).close()
    except OSError:
        pytest.skip("this host cannot send from 127.0.1.1")
    app = serve_config(configured(sandbox, tmp_path, {**OFF, "new_source": {"days": 30}}))
    assert exchange_from(sandbox, "127.0.0.1", sandbox.github_token()) == 200  # first ever: learned
    assert exchange_from(sandbox, "127.0.0.2", sandbox.github_token()) == 200  # same /24
    settle(app)
    assert alerts_of(audit_events) == []
    assert exchange_from(sandbox, "127.0.1.5", sandbox.github_token()) == 200  # another /24
    settle(app)
    (fired,) = alerts_of(audit_events, "new_source")
    assert fired["details"] == {"network": "127.0.1.0/24", "days": 30}
    assert fired["client"] == "127.0.1.5" and fired["identity"] == "github:892734123"
    assert exchange_from(sandbox, "127.0.1.6", sandbox.github_token()) == 200  # that network is known now
    assert exchange_from(sandbox, "127.0.0.9", sandbox.github_token()) == 200  # and so is the first
    settle(app)
    assert len(alerts_of(audit_events, "new_source")) == 1


def test_client_networks_are_the_ipv4_24_and_the_ipv6_56():
    assert client_network("203.0.113.77") == "203.0.113.0/24"
    assert client_network("2001:db8:aa:bbcc:1::1") == "2001:db8:aa:bb00::/56"
    assert client_network("2001:db8:aa:bbff::2") == "2001:db8:aa:bb00::/56"
    assert client_network("2001:db8:aa:cc00::2") == "2001:db8:aa:cc00::/56"
    assert client_network("::ffff:198.51.100.9") == "198.51.100.0/24"
    assert client_network("unix-socket") is None
    assert client_network(None) is None


# -- off_hours ------------------------------------------------------------------------------------


def test_hours_honour_the_zone_and_daylight_saving():
    hours = parse_hours(("Mon-Fri 07:00-19:00 Europe/Berlin",))
    monday_winter = datetime(2024, 1, 15, tzinfo=UTC)
    monday_summer = datetime(2024, 7, 15, tzinfo=UTC)
    assert not hours.contains(monday_winter.replace(hour=5, minute=59))  # 06:59 CET
    assert hours.contains(monday_winter.replace(hour=6))  # 07:00 CET
    assert hours.contains(monday_summer.replace(hour=5))  # 07:00 CEST
    assert not hours.contains(monday_summer.replace(hour=4, minute=59))  # 06:59 CEST
    assert hours.contains(monday_winter.replace(hour=17, minute=59))  # 18:59 CET
    assert not hours.contains(monday_winter.replace(hour=18))  # 19:00 CET: the end is excluded
    assert not hours.contains(datetime(2024, 1, 13, 12, tzinfo=UTC))  # a Saturday
    # Friday 23:30 in New York is Saturday in Berlin: the zone decides the day too.
    ny = parse_hours(("Mon-Fri 07:00-24:00 America/New_York",))
    assert ny.contains(datetime(2024, 1, 20, 4, 30, tzinfo=UTC))
    assert not hours.contains(datetime(2024, 1, 20, 4, 30, tzinfo=UTC))


def test_hours_spellings():
    assert parse_hours(("daily 00:00-24:00 UTC",)).contains(datetime(2024, 1, 13, 23, 59, tzinfo=UTC))
    weekend = parse_hours(("Sat,Sun 10:00-12:00 UTC", "Fri-Mon 20:00-21:00 UTC"))
    assert weekend.contains(datetime(2024, 1, 13, 11, tzinfo=UTC))
    assert weekend.contains(datetime(2024, 1, 15, 20, 30, tzinfo=UTC))  # Monday, by the wrapping range
    assert not weekend.contains(datetime(2024, 1, 16, 20, 30, tzinfo=UTC))  # Tuesday


@pytest.mark.parametrize(
    ("hours", "message"),
    [
        ("Mon-Fri 07:00-19:00", "is not DAYS HH:MM-HH:MM ZONE"),
        ("Mon-Fri 19:00-07:00 UTC", "start must be before the end"),
        ("Mon-Fry 07:00-19:00 UTC", "'mon-fry' is not a day"),
        ("Mon-Fri 07:00-25:00 UTC", "is not a time of day"),
        ("Mon-Fri 07:00-19:00 Europe/Berln", "unknown time zone 'Europe/Berln'"),
    ],
)
def test_bad_hours_are_config_errors_with_the_key_path(sandbox, tmp_path, hours, message):
    config = sandbox.config_dict()
    config["roles"]["deploy-prod"]["hours"] = hours
    with pytest.raises(ConfigError) as info:
        build_config(config, base_dir=sandbox.workdir)
    (finding,) = [f for f in info.value.findings if f.level == "error"]
    assert finding.path == "roles.deploy-prod.hours" and message in finding.message


def test_off_hours_fires_for_a_grant_outside_the_roles_hours_only(
    sandbox, serve_config, tmp_path, audit_events
):
    closed_day = (datetime.now(UTC) + timedelta(days=2)).strftime("%a")  # never today, in any zone
    app = serve_config(
        configured(
            sandbox,
            tmp_path,
            OFF,
            deploy_prod=f"{closed_day} 09:00-17:00 UTC",
            gcp_deploy="daily 00:00-24:00 UTC",
        )
    )
    assert sandbox.exchange(sandbox.github_token(), role="gcp-deploy").status_code == 200
    assert alerts_of(audit_events) == []
    assert sandbox.exchange(sandbox.github_token(repository_id="9"), role="deploy-prod").status_code == 403
    assert alerts_of(audit_events) == [], "only grants are off-hours"
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    settle(app)
    (fired,) = alerts_of(audit_events, "off_hours")
    assert fired["severity"] == "low" and fired["role"] == "deploy-prod"
    assert fired["details"]["hours"] == f"{closed_day} 09:00-17:00 UTC"


# -- what every alert is --------------------------------------------------------------------------


def test_every_alert_is_counted_and_carries_no_token(sandbox, serve_config, tmp_path, audit_events):
    app = serve_config(configured(sandbox, tmp_path, {**OFF, "denied_burst": {"count": 2, "window": 60}}))
    before = counted()
    assert set(KINDS) <= set(before), "every kind's counter exists from start-up, at 0"
    tokens = [sandbox.github_token(repository_id="666") for _ in range(2)]
    for token in tokens:
        assert sandbox.exchange(token).status_code == 403
    settle(app)
    assert counted()["denied_burst"] == before["denied_burst"] + 2  # identity and client
    lines = json.dumps(alerts_of(audit_events))
    for token in tokens:
        assert token not in lines and token.split(".")[2] not in lines


def test_refresh_reuse_is_one_call_for_the_sessions_code(sandbox, tmp_path, audit_events):
    config = build_config(sandbox.config_dict(), base_dir=sandbox.workdir)
    alerts = Alerts(config, AlertSettings(), MemoryWindows())
    event = refused_event("github:1", request_id="r-1")
    event.type = "refresh"
    before = counted().get("refresh_reuse", 0)
    alerts.refresh_reuse(event, session_id="s-123")
    (fired,) = alerts_of(audit_events, "refresh_reuse")
    assert fired["severity"] == "critical" and fired["request_id"] == "r-1"
    assert fired["details"] == {"session_id": "s-123"}
    assert counted()["refresh_reuse"] == before + 1
    alerts.close()


def test_an_alert_names_the_identity_rate_limits_count_for_every_provider_type(sandbox, broker, audit_events):
    # One definition of an identity (ProviderConfig.identity) serves rate limits, audit and alerts,
    # whatever claim a provider type's repository id is (Jenkins': sub, not an audited claim).
    for provider in broker.extensions["broker"].config.providers.values():
        claims = {provider.schema.neutral["repository_id"]: "42", "sub": "42"}
        assert provider.identity(claims) == f"{provider.name}:42"
    assert sandbox.exchange(sandbox.github_token()).status_code == 200
    assert audit_events[-1]["identity"] == "github:892734123"


# -- several replicas count together --------------------------------------------------------------


def refused_event(identity: str, *, request_id: str, client: str = "192.0.2.1") -> AuditEvent:
    provider, repository_id = identity.split(":")
    event = AuditEvent("exchange", request_id, client)
    event.provider, event.issuer, event.subject = provider, "https://issuer.example", "sub"
    event.claims = {"repository_id": repository_id}
    event.identity = identity
    event.role = "deploy-prod"
    event.outcome, event.error = "refused", "access_denied"
    return event


@pytest.mark.parametrize("store", ["redis", "sqlite"])
def test_replicas_count_together_and_raise_one_alert(sandbox, tmp_path, request, audit_events, store):
    config = build_config(sandbox.config_dict(), base_dir=sandbox.workdir)
    settings = AlertSettings(denied_burst=Burst(count=3, window=60), bulk=None, new_source_days=None)
    if store == "redis":
        url = request.getfixturevalue("redis_server").url
        stores = [RedisWindows(url), RedisWindows(url)]
    else:
        stores = [SqliteWindows(str(tmp_path / "state.db")) for _ in range(2)]
    replicas = [Alerts(config, settings, s) for s in stores]
    identity = f"github:{tmp_path.name}"  # fresh per test: the redis server is shared by the module
    for i, replica in enumerate(replicas):
        replica.observe(refused_event(identity, request_id=f"r{i}", client=f"192.0.2.{i}"))
        assert replica.queue.flush(10)
    assert alerts_of(audit_events) == []
    replicas[0].observe(refused_event(identity, request_id="r2", client="198.51.100.1"))
    assert replicas[0].queue.flush(10)
    replicas[1].observe(refused_event(identity, request_id="r3", client="198.51.100.2"))
    assert replicas[1].queue.flush(10)
    (fired,) = alerts_of(audit_events, "denied_burst")
    assert fired["request_id"] == "r2" and fired["details"]["scope"] == "identity"
    for replica in replicas:
        replica.close()


def test_a_store_that_fails_drops_the_count_and_says_so(sandbox, tmp_path, caplog):
    config = build_config(sandbox.config_dict(), base_dir=sandbox.workdir)
    windows = SqliteWindows(str(tmp_path / "state.db"))
    windows.close()  # every use now raises
    alerts = Alerts(config, AlertSettings(bulk=Bulk(2, 2, 60)), windows)
    alerts.observe(refused_event("github:1", request_id="r"))
    assert alerts.queue.flush(10)
    assert any("alert counting skipped" in r.getMessage() for r in caplog.records)
    alerts.queue.close()


class HeldWindows(MemoryWindows):
    """The memory store, made to wait until the test lets it answer."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def run(self, ops):
        assert self.release.wait(30)
        return super().run(ops)


def test_counting_happens_off_the_request_path(sandbox):
    # The store does not answer until the test says so: if `observe` waited for it, this would hang.
    config = build_config(sandbox.config_dict(), base_dir=sandbox.workdir)
    windows = HeldWindows()
    alerts = Alerts(config, AlertSettings(denied_burst=Burst(2, 60)), windows)
    alerts.start()
    for i in range(3):
        alerts.observe(refused_event("github:1", request_id=f"r{i}"))
    assert alerts.queue.pending() == 3
    windows.release.set()
    assert alerts.queue.flush(10)
    assert alerts.queue.pending() == 0
    alerts.close()


def test_events_counted_in_one_batch_fire_once_at_the_threshold_event(sandbox, audit_events):
    # Events that pile up while the thread is busy are counted together, and judged in order.
    config = build_config(sandbox.config_dict(), base_dir=sandbox.workdir)
    windows = HeldWindows()
    alerts = Alerts(
        config, AlertSettings(denied_burst=Burst(3, 60), bulk=None, new_source_days=None), windows
    )
    alerts.start()
    for i in range(6):
        alerts.observe(refused_event("github:1", request_id=f"r{i}", client=f"192.0.2.{i}"))
    windows.release.set()
    assert alerts.queue.flush(10)
    (fired,) = alerts_of(audit_events, "denied_burst")
    assert fired["request_id"] == "r2" and fired["details"]["count"] == 3
    alerts.close()


@pytest.mark.parametrize("error", ["rate_limited", "upstream_error", "unavailable", "internal_error"])
def test_server_side_refusals_are_not_counted_as_denials(sandbox, error):
    config = build_config(sandbox.config_dict(), base_dir=sandbox.workdir)
    windows = MemoryWindows()
    alerts = Alerts(config, AlertSettings(denied_burst=Burst(2, 60)), windows)
    event = refused_event("github:1", request_id="r")
    event.error = error
    alerts.observe(event)
    assert alerts.queue.pending() == 0 and windows._windows == {}
    alerts.close()
