"""Every cloud client keeps as many connections as a worker runs threads.

Each library defaults to 10 pooled connections per host. With more concurrent exchanges than that
(`serve` runs 16 threads per worker), urllib3 discards the extra connections after each call, so
under load every exchange beyond the tenth would open a new TLS connection to the cloud.
"""

from __future__ import annotations

from typing import Any

from broker.clouds._http import POOL_SIZE
from broker.server import DEFAULT_THREADS


def backend(broker: Any, role: str) -> Any:
    wrapped = broker.extensions["broker"].backends[role]
    return getattr(wrapped, "inner", wrapped)  # the metrics wrapper, when present


def adapters_pool_size(session: Any) -> set[int]:
    return {adapter._pool_maxsize for adapter in session.adapters.values()}


def test_the_pool_outnumbers_the_default_threads():
    assert POOL_SIZE >= DEFAULT_THREADS


def test_aws_sts_client_pools_enough_connections(broker):
    assert backend(broker, "deploy-prod").sts.meta.config.max_pool_connections == POOL_SIZE


def test_gcp_session_pools_enough_connections(broker):
    assert adapters_pool_size(backend(broker, "gcp-deploy").session) == {POOL_SIZE}


def test_azure_transport_pools_enough_connections(broker):
    transport = backend(broker, "azure-deploy").pipeline_options["transport"]
    assert adapters_pool_size(transport.session) == {POOL_SIZE}
