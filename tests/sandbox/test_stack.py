"""The sandbox's servers get ports nothing else on the machine is about to take."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from broker.sandbox.stack import free_port

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@pytest.mark.skipif(not EPHEMERAL_RANGE.exists(), reason="reads Linux's ephemeral port range")
def test_a_free_port_is_never_one_the_kernel_lends_to_outgoing_connections():
    # A port from bind(0) can be any process's next source port before the server binds it:
    # the broker's port in test_demo was once taken that way (EADDRINUSE).
    first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    ports = {free_port() for _ in range(200)}
    assert all(port < first_ephemeral for port in ports)
    assert len(ports) > 150  # spread wide: test processes running side by side rarely meet


def test_a_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()


def test_seeding_random_does_not_repeat_the_ports():
    # A test may seed `random` (Hypothesis does, alike in every xdist worker).
    random.seed(1)
    first = [free_port() for _ in range(5)]
    random.seed(1)
    assert [free_port() for _ in range(5)] != first


def test_settle_waits_for_a_stalled_request_to_be_recorded(sandbox):
    import requests

    before = len(sandbox.gcp.calls)
    sandbox.gcp.faults.stall(0.5, path="/v1/token")
    with pytest.raises(requests.Timeout):  # the caller gives up, as a broker with a short timeout does
        requests.post(sandbox.gcp.token_url, data={"grant_type": "x"}, timeout=0.1)
    assert len(sandbox.gcp.calls) == before  # still stalled: its call is recorded when it finishes
    sandbox.settle()
    assert len(sandbox.gcp.calls) == before + 1
