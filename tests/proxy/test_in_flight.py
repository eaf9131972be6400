"""In-flight accounting: the drain waits for proxied requests."""

import asyncio
import json
import socket

import pytest

from proxy.support import TOKEN, fetch


# -- in-flight accounting (drain) ---------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_drain_waits_for_proxied_requests_and_none_is_left_counted(start_gateway, stubs):
    gw = start_gateway({"DRAIN_TIMEOUT": "8", "RATE_LIMIT_ENABLED": "false"})
    # Every way a proxied request can end: success, refusal, upstream error, client gone.
    assert (await fetch(gw, "/api/chats/a")).code == 200
    assert (await fetch(gw, "/api/chats/a", auth=False)).code == 401
    assert (await fetch(gw, "/api/chats/status/500")).code == 500
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(f"GET /api/chats/slow/300 HTTP/1.1\r\nHost: gw\r\n"
                     f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
    await asyncio.sleep(0.5)
    in_flight = asyncio.ensure_future(fetch(gw, "/api/chats/slow/1500"))
    await asyncio.sleep(0.5)
    gw.signal()
    response = await in_flight
    assert response.code == 200 and json.loads(response.body)["slept_ms"] == 1500
    assert await asyncio.get_running_loop().run_in_executor(None, gw.wait, 20) == 0
    assert "still in flight" not in gw.logs()
