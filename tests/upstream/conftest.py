"""Fixtures of the upstream client's tests."""

import pytest

from tornado_gateway.upstream.client import PooledHTTPClient


@pytest.fixture
def client(io_loop):
    """A PooledHTTPClient of its own, closed after the test."""
    client = PooledHTTPClient(force_instance=True)
    yield client
    client.close()
