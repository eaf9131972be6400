"""Security headers on every kind of response, and CORS for exactly the allowed origins."""

import json

import pytest
from tornado.httpclient import AsyncHTTPClient

from harness import ORIGIN, GatewayProcess, free_port, make_token

AUTH = {"Authorization": f"Bearer {make_token('u-headers')}"}
OTHER_ORIGIN = "http://evil.test"
# helmet's defaults, as the floor (X-Frame-Options and CSP are stricter here; see README).
FLOOR = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-DNS-Prefetch-Control": "off",
    "X-Permitted-Cross-Domain-Policies": "none",
}


@pytest.fixture(scope="module")
def edge(stub_upstreams):
    """A gateway with a small body limit and one upstream that refuses connections."""
    process = GatewayProcess({
        **stub_upstreams.env(),
        "MAX_BODY_SIZE": "1024",
        "NOTIFICATIONS_SERVICE_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: 502
        "RATE_LIMIT_ENABLED": "false",
    }).start()
    yield process
    process.stop()


async def fetch(edge, path, method="GET", headers=None, body=None):
    client = AsyncHTTPClient()
    return await client.fetch(edge.url(path), method=method, headers=headers or {}, body=body,
                              raise_error=False, allow_nonstandard_methods=True, follow_redirects=False)


def upstream_answers_with(stubs, path: str, headers: dict, body=b'{"ok":true}') -> None:
    """Make the stub behind ``path`` answer 200 with extra response headers."""

    def answer(record, handler):
        for name, value in headers.items():
            handler.set_header(name, value)
        handler.finish(body)

    stubs.hooks[("GET", path)] = answer


def cors_headers(response) -> list[str]:
    return [name for name in response.headers if name.lower().startswith("access-control-")]


def assert_floor(response):
    for name, value in FLOOR.items():
        assert response.headers.get(name) == value, (name, response.code)
    csp = response.headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "Server" not in response.headers
    assert "X-Powered-By" not in response.headers


KINDS = [
    # (id, path, method, headers, body, expected status)
    ("200 health", "/healthz", "GET", {}, None, 200),
    ("200 ready", "/readyz", "GET", {}, None, 200),
    ("200 proxied", "/api/users/echo", "GET", AUTH, None, 200),
    ("upstream 500 passed through", "/api/users/status/500", "GET", AUTH, None, 500),
    ("404 no route", "/nowhere", "GET", {}, None, 404),
    ("401 no token", "/api/users/echo", "GET", {}, None, 401),
    ("413 body too large", "/api/users/upload", "POST", AUTH, b"x" * 4096, 413),
    ("502 upstream refused", "/api/notifications/x", "GET", AUTH, None, 502),
    ("204 preflight", "/api/users/echo", "OPTIONS",
     {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}, None, 204),
    ("200 socket.io polling handshake", "/socket.io/?EIO=4&transport=polling", "GET", {}, None, 200),
    ("400 socket.io unknown session", "/socket.io/?EIO=4&transport=polling&sid=nope", "GET", {}, None, 400),
    ("413 socket.io polling post too large", "/socket.io/?EIO=4&transport=polling&sid=nope", "POST", {},
     b"4" * (2 * 1024 * 1024), 413),
]


@pytest.mark.parametrize("path, method, headers, body, status", [k[1:] for k in KINDS],
                         ids=[k[0] for k in KINDS])
@pytest.mark.gen_test
async def test_every_response_carries_the_security_floor(edge, stubs, path, method, headers, body, status):
    response = await fetch(edge, path, method, {**headers, "Origin": ORIGIN}, body)
    assert response.code == status
    assert_floor(response)
    assert response.headers.get("Access-Control-Allow-Origin") == ORIGIN
    assert "Origin" in ",".join(response.headers.get_list("Vary"))


@pytest.mark.gen_test
async def test_socket_origin_refusal_carries_the_floor_and_no_cors(edge):
    response = await fetch(edge, "/socket.io/?EIO=4&transport=polling", headers={"Origin": OTHER_ORIGIN})
    assert response.code == 403
    assert json.loads(response.body)["error"]["code"] == "FORBIDDEN"
    assert_floor(response)
    assert cors_headers(response) == []


@pytest.mark.gen_test
async def test_upstream_server_and_powered_by_are_removed(edge, stubs):
    upstream_answers_with(stubs, "/powered", {"X-Powered-By": "Express", "Server": "nginx/1.2.3"})
    response = await fetch(edge, "/api/users/powered", headers=AUTH)
    assert response.code == 200 and stubs.received("users", "/powered")
    assert_floor(response)


@pytest.mark.gen_test
async def test_upstream_may_set_its_own_value_of_a_security_header(edge, stubs):
    """The documented override rule: e.g. media relaxing Cross-Origin-Resource-Policy."""

    upstream_answers_with(stubs, "/image", {"Cross-Origin-Resource-Policy": "cross-origin"}, b"image")
    response = await fetch(edge, "/api/media/image", headers=AUTH)
    assert response.code == 200
    assert response.headers.get_list("Cross-Origin-Resource-Policy") == ["cross-origin"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # the rest stays


@pytest.mark.parametrize("path, headers", [("/healthz", {}), ("/nowhere", {}), ("/api/users/echo", AUTH),
                                           ("/api/users/echo", {})])
@pytest.mark.gen_test
async def test_allowed_origin_is_echoed_with_credentials_and_vary(edge, stubs, path, headers):
    response = await fetch(edge, path, headers={**headers, "Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in [v.strip() for v in ",".join(response.headers.get_list("Vary")).split(",")]


@pytest.mark.parametrize("origin", [OTHER_ORIGIN, "null", ORIGIN + ".evil.test", ORIGIN.upper(),
                                    ORIGIN.replace("http:", "https:")])
@pytest.mark.parametrize("path, headers", [("/healthz", {}), ("/api/users/echo", AUTH)])
@pytest.mark.gen_test
async def test_other_origins_get_no_cors_headers(edge, stubs, origin, path, headers):
    response = await fetch(edge, path, headers={**headers, "Origin": origin})
    assert response.code == 200
    assert cors_headers(response) == []


@pytest.mark.gen_test
async def test_upstream_cors_headers_never_reach_the_client(edge, stubs):
    upstream_answers_with(stubs, "/permissive", {"Access-Control-Allow-Origin": "*",
                                                  "Access-Control-Allow-Credentials": "true"})
    response = await fetch(edge, "/api/users/permissive", headers={**AUTH, "Origin": OTHER_ORIGIN})
    assert response.code == 200 and stubs.received("users", "/permissive")
    assert cors_headers(response) == []


@pytest.mark.parametrize("path", ["/api/users/echo", "/api/auth/login", "/api/media/x", "/healthz"])
@pytest.mark.gen_test
async def test_preflight_from_allowed_origin_is_answered_by_the_gateway(edge, stubs, path):
    response = await fetch(edge, path, "OPTIONS", {
        "Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization, content-type, x-custom"})
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "PUT" in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "x-custom" in allowed
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert_floor(response)
    assert stubs.received() == []  # no upstream saw the preflight


@pytest.mark.parametrize("origin", [OTHER_ORIGIN, None])
@pytest.mark.gen_test
async def test_preflight_from_other_origin_is_refused_without_cors_headers(edge, stubs, origin):
    headers = {"Access-Control-Request-Method": "POST"}
    if origin:
        headers["Origin"] = origin
    response = await fetch(edge, "/api/users/echo", "OPTIONS", headers)
    assert response.code == 403
    assert json.loads(response.body)["error"]["code"] == "FORBIDDEN"
    assert cors_headers(response) == []
    assert_floor(response)
    assert stubs.received() == []
