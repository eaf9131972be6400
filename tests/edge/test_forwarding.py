"""Forwarding headers, identity headers and the request id, as upstreams receive them."""


import pytest

from proxy.support import TOKEN, fetch
from proxy.support import dead_ports, hangup, proxy_gw  # noqa: F401 (fixtures)


@pytest.mark.gen_test
async def test_forwarded_headers_from_an_untrusted_client_are_replaced(proxy_gw, stubs):
    await fetch(proxy_gw, "/api/chats/fwd", headers={
        "X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.com",
        "X-Forwarded-Port": "1", "X-Real-IP": "5.6.7.8", "Forwarded": "for=1.2.3.4"})
    seen = stubs.received("chats")[0].headers
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{proxy_gw.port}"
    assert "x-forwarded-port" not in seen and "x-real-ip" not in seen and "forwarded" not in seen
    assert seen["host"] == f"127.0.0.1:{stubs.ports['chats']}"


@pytest.mark.gen_test
async def test_forwarded_headers_from_a_trusted_proxy_are_believed(start_gateway, stubs):
    gw = start_gateway({"TRUSTED_PROXIES": "127.0.0.1/32", "RATE_LIMIT_ENABLED": "false"})
    await fetch(gw, "/api/chats/fwd", headers={
        "X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example"})
    seen = stubs.received("chats")[0].headers
    assert seen["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "app.example"


@pytest.mark.gen_test
async def test_spoofed_identity_headers_stripped_and_set_from_the_token(proxy_gw, stubs):
    spoof = {"X-User-Id": "admin", "X-User-Role": "admin", "X-User-Email": "a@b"}
    await fetch(proxy_gw, "/api/auth/login", auth=False, headers=spoof)  # public, anonymous
    await fetch(proxy_gw, "/api/chats/me", headers=spoof)  # authenticated as u1
    anonymous, authenticated = stubs.received()
    assert not [h for h in anonymous.headers if h.startswith("x-user")]
    assert [h for h in authenticated.headers if h.startswith("x-user")] == ["x-user-id"]
    assert authenticated.headers["x-user-id"] == "u1"
    assert authenticated.headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.gen_test
async def test_request_id_kept_when_sane_replaced_when_not_and_always_returned(proxy_gw, stubs):
    sent = ["abc-123.X:y_z", "has spaces in it", "x" * 300, None]
    returned = []
    for value in sent:
        response = await fetch(proxy_gw, "/api/chats/rid", headers={"X-Request-ID": value} if value else {})
        returned.append(response.headers["X-Request-ID"])
    upstream = [r.headers["x-request-id"] for r in stubs.received("chats")]
    assert upstream == returned
    assert returned[0] == "abc-123.X:y_z"
    assert returned[1] != sent[1] and returned[2] != sent[2] and returned[3]
    assert len(set(returned)) == 4
