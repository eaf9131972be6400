"""Fixtures: the real parts from harness.py, started once where that is safe."""

from __future__ import annotations

import pytest

from harness import GatewayProcess, RedisServer, StubUpstreams


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the session; tests that kill Redis use ``own_redis``."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def own_redis():
    """A redis-server for this test alone (it may be killed and restarted)."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stub_upstreams():
    stubs = StubUpstreams().start()
    yield stubs
    stubs.stop()


@pytest.fixture
def stubs(stub_upstreams):
    """The session's stub upstreams with an empty record and no hooks."""
    stub_upstreams.clear()
    yield stub_upstreams
    stub_upstreams.clear()


@pytest.fixture
def start_gateway(stub_upstreams):
    """Start gateway processes with extra env; all are stopped after the test."""
    started: list[GatewayProcess] = []

    def start(env: dict | None = None, args: list[str] | None = None, wait: bool = True):
        gateway = GatewayProcess({**stub_upstreams.env(), **(env or {})}, args)
        started.append(gateway)
        return gateway.start(wait=wait)

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(stub_upstreams):
    """A single-node (memory) gateway shared by a module's tests."""
    process = GatewayProcess(stub_upstreams.env()).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    """One 3-master Redis Cluster for the session; tests that restart a shard use ``own_redis_cluster``."""
    from redis_cluster import RedisCluster

    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_redis_cluster():
    """A 3-master Redis Cluster for this test alone (a shard may be killed and restarted)."""
    from redis_cluster import RedisCluster

    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()
