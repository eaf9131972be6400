"""The circuit breaker on the wire: opens after failures, a probe closes it."""

import asyncio
import json

import pytest
import tornado.httpserver
import tornado.web

from harness import free_port
from proxy.support import fetch


# -- circuit breaker --------------------------------------------------------------------------

class _Ok(tornado.web.RequestHandler):
    def get(self):
        self.write("up")

    post = get


@pytest.mark.gen_test(timeout=30)
async def test_circuit_opens_after_failures_then_a_probe_closes_it(start_gateway, stubs):
    port = free_port()
    gw = start_gateway({"CIRCUIT_FAILURES": "3", "CIRCUIT_COOLDOWN": "1", "RATE_LIMIT_ENABLED": "false",
                        "GATEWAY_ROUTES": f"/api/flaky=http://127.0.0.1:{port}"})
    # Upstream 5xx answers do not open it.
    for _ in range(4):
        assert (await fetch(gw, "/api/chats/status/503")).code == 503
    assert json.loads((await fetch(gw, "/api/chats/x")).body)["from"] == "chats"
    # Connect failures do.
    for _ in range(3):
        assert (await fetch(gw, "/api/flaky/x", method="POST", body=b"")).code == 502
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r".*", _Ok)]))
    server.listen(port, "127.0.0.1")
    try:
        response = await fetch(gw, "/api/flaky/x")
        assert response.code == 503  # open: refused without trying, though it is back
        assert json.loads(response.body)["error"]["code"] == "CIRCUIT_OPEN"
        assert 1 <= int(response.headers["Retry-After"]) <= 1
        await asyncio.sleep(1.2)
        assert (await fetch(gw, "/api/flaky/x")).body == b"up"  # the half-open probe
        assert (await fetch(gw, "/api/flaky/y")).body == b"up"  # closed again
    finally:
        server.stop()
