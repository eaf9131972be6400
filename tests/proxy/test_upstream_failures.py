"""Upstream failures: 502, one retry on a connect failure, 504, a cut response."""

import json

import pytest

from internal_client import fetch as internal_fetch
from proxy.support import TOKEN, fetch, metric, parse_raw, raw_exchange
from proxy.support import dead_ports, hangup, proxy_gw  # noqa: F401 (fixtures)


# -- upstream failures ---------------------------------------------------------------------

@pytest.mark.gen_test
async def test_upstream_down_is_502_json_with_request_id(proxy_gw):
    response = await fetch(proxy_gw, "/api/down/x")
    body = json.loads(response.body)
    assert response.code == 502
    assert body["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert body["error"]["requestId"] == response.headers["X-Request-ID"]
    assert response.headers["Content-Type"].startswith("application/json")


@pytest.mark.gen_test
async def test_get_retried_once_on_connect_failure_post_never(proxy_gw):
    before = (await internal_fetch(proxy_gw, "/metrics")).body.decode()
    assert (await fetch(proxy_gw, "/api/down/retry")).code == 502
    assert (await fetch(proxy_gw, "/api/downpost/once", method="POST", body=b"{}")).code == 502
    after = (await internal_fetch(proxy_gw, "/metrics")).body.decode()
    name = "gateway_upstream_errors_total"
    get_attempts = metric(after, name, upstream="down", kind="connect") - metric(
        before, name, upstream="down", kind="connect")
    post_attempts = metric(after, name, upstream="downpost", kind="connect") - metric(
        before, name, upstream="downpost", kind="connect")
    assert (get_attempts, post_attempts) == (2, 1)


@pytest.mark.gen_test
async def test_upstream_hanging_up_after_the_request_is_502_and_not_retried(proxy_gw, hangup):
    before = hangup.requests
    response = await fetch(proxy_gw, "/api/hangup/x")
    assert response.code == 502
    assert json.loads(response.body)["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert hangup.requests - before == 1  # the request was sent: a GET is not sent twice


@pytest.mark.gen_test
async def test_slow_upstream_is_504(proxy_gw, stubs):
    response = await fetch(proxy_gw, "/api/slowpoke/slow/3000")
    assert response.code == 504
    assert json.loads(response.body)["error"]["code"] == "UPSTREAM_TIMEOUT"
    assert len(stubs.received("chats")) == 1


@pytest.mark.gen_test
async def test_upstream_reset_mid_stream_cuts_the_client_response(proxy_gw):
    # The stub promises 1000 bytes, sends 10 and closes.
    data = raw_exchange(proxy_gw.port, (f"GET /api/chats/reset HTTP/1.1\r\nHost: gw\r\n"
                                        f"Authorization: Bearer {TOKEN}\r\n\r\n").encode())
    status, headers, body = parse_raw(data)
    assert status == 200 and headers["content-length"] == "1000"
    assert len(body) < 1000  # cut: never presented as complete
