"""Headers across the proxy: hop-by-hop both ways, Host, head size, repeated fields."""


import pytest

from harness import ORIGIN
from proxy.support import TOKEN, fetch, parse_raw, raw_exchange
from proxy.support import dead_ports, hangup, proxy_gw  # noqa: F401 (fixtures)


# -- headers --------------------------------------------------------------------------

def _hop_by_hop_response(record, handler):
    handler.set_header("Connection", "keep-alive, X-Up-Hop")
    handler.set_header("X-Up-Hop", "secret")
    handler.set_header("Keep-Alive", "timeout=5")
    handler.set_header("Proxy-Authenticate", 'Basic realm="x"')
    handler.set_header("Upgrade", "h2c")
    handler.set_header("Trailer", "X-Checksum")
    handler.set_header("Server", "stub/1.0")
    handler.set_header("X-Powered-By", "Express")
    handler.set_header("Access-Control-Allow-Origin", "*")
    handler.set_header("Access-Control-Allow-Methods", "DELETE")
    handler.set_header("X-Frame-Options", "SAMEORIGIN")  # overrides the gateway's default
    handler.set_header("X-End-To-End", "kept")
    handler.add_header("Set-Cookie", "a=1; Path=/")
    handler.add_header("Set-Cookie", "b=2; Path=/")
    handler.finish(b"ok")


@pytest.mark.gen_test
async def test_hop_by_hop_headers_dropped_both_ways(proxy_gw, stubs):
    stubs.hooks[("GET", "/hop")] = _hop_by_hop_response
    response = await fetch(proxy_gw, "/api/chats/hop", headers={
        "Connection": "keep-alive, X-Client-Hop", "X-Client-Hop": "1", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Trailer": "X-Foo", "Proxy-Authorization": "Basic abc",
        "Proxy-Connection": "keep-alive", "Upgrade": "h2c", "X-End-To-End": "yes",
        "Origin": ORIGIN,
    })
    assert response.code == 200 and response.body == b"ok"
    seen = stubs.received("chats")[0].headers
    for name in ("x-client-hop", "keep-alive", "te", "trailer", "proxy-authorization",
                 "proxy-connection", "upgrade", "expect"):
        assert name not in seen, name
    assert seen["x-end-to-end"] == "yes"
    assert seen.get("connection", "").lower() in ("", "keep-alive")
    headers = response.headers
    for name in ("X-Up-Hop", "Keep-Alive", "Proxy-Authenticate", "Upgrade", "Trailer", "Server",
                 "X-Powered-By", "Access-Control-Allow-Methods"):
        assert name not in headers, name
    assert headers["Access-Control-Allow-Origin"] == ORIGIN  # the gateway's CORS, not the upstream's
    assert headers["X-Frame-Options"] == "SAMEORIGIN"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-End-To-End"] == "kept"
    assert headers.get_list("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


@pytest.mark.parametrize("host_lines", [
    "",  # HTTP/1.1 requires Host
    "Host: bad host\r\n",
    "Host: a/b\r\n",
    "Host: one\r\nHost: two\r\n",
])
@pytest.mark.gen_test
async def test_missing_malformed_or_doubled_host_is_400_and_never_forwarded(proxy_gw, stubs, host_lines):
    data = raw_exchange(proxy_gw.port, (f"GET /api/users/echo HTTP/1.1\r\n{host_lines}"
                                        f"Authorization: Bearer {TOKEN}\r\n\r\n").encode())
    assert parse_raw(data)[0] == 400
    assert stubs.received() == []


@pytest.mark.parametrize("head", ["GET /api/users/{big} HTTP/1.1\r\nHost: gw\r\n",
                                  "GET /api/users/echo HTTP/1.1\r\nHost: gw\r\nX-Big: {big}\r\n"])
@pytest.mark.gen_test
async def test_request_head_over_64_kib_is_closed_unanswered_and_never_forwarded(proxy_gw, stubs, head):
    data = raw_exchange(proxy_gw.port, (head.format(big="b" * 70000)
                                        + f"Authorization: Bearer {TOKEN}\r\n\r\n").encode())
    assert data == b""
    assert stubs.received() == []
    assert (await fetch(proxy_gw, "/api/users/echo")).code == 200  # the node is fine


@pytest.mark.gen_test
async def test_http_1_0_without_host_is_proxied(proxy_gw, stubs):
    data = raw_exchange(proxy_gw.port, f"GET /api/users/echo HTTP/1.0\r\nAuthorization: Bearer {TOKEN}"
                                       f"\r\n\r\n".encode())
    assert parse_raw(data)[0] == 200
    (record,) = stubs.received("users")
    assert record.headers["x-forwarded-host"] == "127.0.0.1"


@pytest.mark.gen_test
async def test_repeated_request_headers_reach_the_upstream_combined(proxy_gw, stubs):
    raw_exchange(proxy_gw.port, (f"GET /api/users/echo HTTP/1.1\r\nHost: gw\r\n"
                                 f"Authorization: Bearer {TOKEN}\r\nAccept: text/plain\r\n"
                                 f"Accept: application/json\r\nCookie: a=1\r\nCookie: b=2\r\n"
                                 f"Connection: close\r\n\r\n").encode())
    (record,) = stubs.received("users")
    names = [name.lower() for name, _ in record.header_list]
    assert names.count("accept") == 1 and names.count("cookie") == 1
    assert record.headers["accept"] == "text/plain, application/json"  # RFC 9110 §5.3
    assert record.headers["cookie"] == "a=1; b=2"  # one Cookie header (RFC 6265 §5.4)


@pytest.mark.parametrize("upstream_lines", [
    [("Content-Type", "application/json"), ("Content-Length", "2")],
    [("Vary", "Accept"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
    [("Cross-Origin-Resource-Policy", "cross-origin"), ("Content-Length", "0")],  # relaxes one
    [("X-Frame-Options", "SAMEORIGIN"), ("Connection", "close, X-Frame-Options")],
    [],
])
def test_preformatted_security_block_gives_the_same_head_as_line_by_line(upstream_lines):
    from tornado import httputil

    from tornado_gateway.edge.security_headers import SECURITY_HEADERS
    from tornado_gateway.proxy.headers import response_head

    upstream = httputil.HTTPHeaders()
    for name, value in upstream_lines:
        upstream.add(name, value)
    ours = [("Date", "Sat, 05 Dec 2026 07:00:00 GMT"), ("X-Request-ID", "r1"), ("Vary", "Origin"),
            ("RateLimit", "limit=5")]
    line_by_line = response_head([ours[0], *SECURITY_HEADERS, *ours[1:]], upstream)
    assert response_head(ours, upstream, SECURITY_HEADERS, at=1) == line_by_line
    # a default naming one of the constant headers: the general merge, the same bytes
    clash = [*ours, ("X-Frame-Options", "DENY")]
    assert (response_head(clash, upstream, SECURITY_HEADERS, at=1)
            == response_head([clash[0], *SECURITY_HEADERS, *clash[1:]], upstream))
