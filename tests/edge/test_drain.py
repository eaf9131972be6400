"""SIGTERM drains a real gateway: not ready, no new connections, in-flight requests finish, exit 0."""

import json
import socket
import time

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from harness import make_token

AUTH = {"Authorization": f"Bearer {make_token('u-drain')}"}


async def wait_until(predicate, timeout: float = 10.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.gen_test(timeout=30)
async def test_sigterm_drains_in_flight_request_then_exits_0(start_gateway, stubs):
    gateway = start_gateway({"DRAIN_TIMEOUT": "5"})
    client = AsyncHTTPClient(force_instance=True)
    # An idle keep-alive connection, opened before the signal.
    idle = socket.create_connection(("127.0.0.1", gateway.port))
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(4096).startswith(b"HTTP/1.1 200")

    slow = client.fetch(gateway.url("/api/users/slow/1500"), headers=AUTH, raise_error=False)
    # A keep-alive connection busy with a request when the signal comes.
    busy = socket.create_connection(("127.0.0.1", gateway.port))
    busy.sendall(f"GET /api/users/slow/1200 HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}"
                 "\r\n\r\n".encode())
    await wait_until(lambda: stubs.received("users", "/slow/1500") and stubs.received("users", "/slow/1200"))
    gateway.signal()

    # Readiness turns 503 (the internal listener stays up for the whole drain) ...
    async def ready_code():
        response = await client.fetch(gateway.internal_base + "/readyz", raise_error=False)
        return response.code, json.loads(response.body)

    code, body = await ready_code()
    for _ in range(50):
        if code == 503:
            break
        code, body = await ready_code()
    assert code == 503 and body["checks"]["draining"]["ok"] is False
    # ... the public listener accepts nothing new, the idle connection is closed ...
    assert connect_refused(gateway.port)
    idle.settimeout(5)
    assert idle.recv(4096) == b""
    idle.close()
    # ... and the in-flight request still completes, told to close its connection.
    response = await slow
    assert response.code == 200
    assert json.loads(response.body)["slept_ms"] == 1500
    assert response.headers.get("Connection") == "close"
    # The busy keep-alive connection got its whole response, then was closed.
    busy.settimeout(5)
    received = b""
    while chunk := busy.recv(65536):
        received += chunk
    busy.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
    assert json.loads(body)["slept_ms"] == 1200
    assert gateway.wait(15) == 0
    messages = [r.get("message", "") for r in gateway.log_records()]
    assert any(m.startswith("draining") for m in messages)
    assert not any("cut" in m for m in messages)
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_drain_timeout_cuts_a_longer_request_and_still_exits_0(start_gateway, stubs):
    gateway = start_gateway({"DRAIN_TIMEOUT": "1"})
    client = AsyncHTTPClient(force_instance=True)
    slow = client.fetch(gateway.url("/api/users/slow/20000"), headers=AUTH, request_timeout=30)
    await wait_until(lambda: stubs.received("users", "/slow/20000"))
    gateway.signal()
    # Exits after about the drain timeout, long before the 20 s upstream would answer.
    assert gateway.wait(8) == 0
    with pytest.raises((HTTPClientError, OSError)):
        await slow
    assert any("cut 1 connection" in r.get("message", "") for r in gateway.log_records())
    client.close()


def test_sigterm_with_nothing_in_flight_exits_0_at_once(start_gateway):
    gateway = start_gateway({"DRAIN_TIMEOUT": "20"})
    assert gateway.get_json("/healthz")[0] == 200
    gateway.signal()
    # Nothing to wait for: far quicker than the 20 s drain timeout.
    assert gateway.wait(8) == 0


@pytest.mark.gen_test(timeout=30)
async def test_second_sigterm_during_the_drain_exits_at_once_with_1(start_gateway, stubs):
    gateway = start_gateway({"DRAIN_TIMEOUT": "20"})
    client = AsyncHTTPClient(force_instance=True)
    slow = client.fetch(gateway.url("/api/users/slow/20000"), headers=AUTH, request_timeout=30)
    await wait_until(lambda: stubs.received("users", "/slow/20000"))
    gateway.signal()
    await wait_until(lambda: any(r.get("message", "").startswith("draining") for r in gateway.log_records()))
    gateway.signal()
    assert gateway.wait(8) == 1  # not the 20 s drain
    with pytest.raises((HTTPClientError, OSError)):
        await slow
    client.close()


@pytest.mark.gen_test(timeout=40)
async def test_drain_grace_not_ready_at_once_on_both_listeners_while_the_public_one_still_serves(
        start_gateway, stubs):
    """SPEC §1: a load balancer checking /readyz sees 503 before the node stops accepting."""
    grace = 3.0
    gateway = start_gateway({"DRAIN_GRACE": str(grace), "DRAIN_TIMEOUT": "10"})
    client = AsyncHTTPClient(force_instance=True)  # a new connection for every request
    assert (await client.fetch(gateway.url("/readyz"))).code == 200
    gateway.signal()
    signalled = time.monotonic()

    async def code(url: str) -> int:
        return (await client.fetch(url, raise_error=False)).code

    await wait_until_async(lambda: code(gateway.url("/readyz")), 503)
    assert await code(gateway.internal_base + "/readyz") == 503
    body = json.loads((await client.fetch(gateway.url("/readyz"), raise_error=False)).body)
    assert body["checks"]["draining"]["ok"] is False
    # Still accepting and serving on the public listener: new connections, proxied and local.
    response = await client.fetch(gateway.url("/api/users/during-grace"), headers=AUTH)
    assert response.code == 200 and stubs.received("users", "/during-grace")
    assert await code(gateway.url("/healthz")) == 200
    assert time.monotonic() - signalled < grace  # all of that within the grace
    # Then the public listener refuses, not before the grace has passed, and the drain ends as before.
    await wait_until(lambda: connect_refused(gateway.port), timeout=15)
    assert time.monotonic() - signalled >= grace - 0.2
    assert gateway.wait(15) == 0
    client.close()


async def wait_until_async(probe, expected, timeout: float = 5.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while await probe() != expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"never {expected}")
        await asyncio.sleep(0.02)
