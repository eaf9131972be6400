"""Routing on the wire: prefix replacement, every service, 404s; upstream answers passed through."""

import gzip
import json

import pytest

from proxy.support import fetch
from proxy.support import dead_ports, hangup, proxy_gw  # noqa: F401 (fixtures)


# -- routing --------------------------------------------------------------------------

@pytest.mark.gen_test
async def test_prefix_replaced_by_upstream_path_and_query_kept_byte_for_byte(proxy_gw, stubs):
    # users is configured as http://127.0.0.1:PORT/users (with a path)
    response = await fetch(proxy_gw, "/api/users/42?x=1&b=%2F+%41&c&d=a%20b")
    assert response.code == 200
    await fetch(proxy_gw, "/api/users")
    assert [r.uri for r in stubs.received("users")] == ["/users/42?x=1&b=%2F+%41&c&d=a%20b", "/users"]


@pytest.mark.gen_test
async def test_prefix_replaced_without_upstream_path(proxy_gw, stubs):
    await fetch(proxy_gw, "/api/chats/42?x=1")
    await fetch(proxy_gw, "/api/chats")
    await fetch(proxy_gw, "/api/chats/")
    assert [r.uri for r in stubs.received("chats")] == ["/42?x=1", "/", "/"]


@pytest.mark.gen_test
@pytest.mark.parametrize("service", ["auth", "users", "chats", "messages", "media", "notifications"])
async def test_every_route_prefix_reaches_its_service(proxy_gw, stubs, service):
    response = await fetch(proxy_gw, f"/api/{service}/ping")
    assert response.code == 200 and json.loads(response.body)["from"] == service
    assert [r.service for r in stubs.received()] == [service]


@pytest.mark.gen_test
async def test_unknown_route_and_prefix_without_segment_boundary_are_404_json(proxy_gw, stubs):
    for path in ("/api/nothing", "/api/usersX/1", "/", "/apix"):
        response = await fetch(proxy_gw, path)
        body = json.loads(response.body)
        assert response.code == 404, path
        assert body["error"]["code"] == "NOT_FOUND"
        assert body["error"]["requestId"] == response.headers["X-Request-ID"]
    assert stubs.received() == []


# -- responses passed through ------------------------------------------------------------

@pytest.mark.gen_test
async def test_upstream_error_responses_pass_through_untouched(proxy_gw, stubs):
    def not_found(record, handler):
        handler.set_status(404)
        handler.set_header("Content-Type", "application/problem+json")
        handler.set_header("X-Upstream-Detail", "no such user")
        handler.finish(b'{"title":"no such user"}')

    stubs.hooks[("GET", "/users/missing")] = not_found
    response = await fetch(proxy_gw, "/api/users/missing")
    assert response.code == 404
    assert response.body == b'{"title":"no such user"}'
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["X-Upstream-Detail"] == "no such user"

    response = await fetch(proxy_gw, "/api/chats/status/500")
    assert response.code == 500
    assert json.loads(response.body) == {"from": "chats", "status": 500}
    assert "Server" not in response.headers


@pytest.mark.gen_test
async def test_redirect_passed_through_not_followed(proxy_gw, stubs):
    response = await fetch(proxy_gw, "/api/chats/redirect")
    assert response.code == 302
    assert response.headers["Location"] == "/elsewhere"
    assert [r.path for r in stubs.received()] == ["/redirect"]


@pytest.mark.gen_test
async def test_gzip_response_passed_through_still_compressed(proxy_gw, stubs):
    payload = gzip.compress(b"hello " * 1000)

    def gzipped(record, handler):
        handler.set_header("Content-Encoding", "gzip")
        handler.set_header("Content-Type", "text/plain")
        handler.finish(payload)

    stubs.hooks[("GET", "/gz")] = gzipped
    response = await fetch(proxy_gw, "/api/chats/gz", headers={"Accept-Encoding": "gzip"})
    assert response.code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.body == payload
    assert stubs.received()[0].headers["accept-encoding"] == "gzip"


@pytest.mark.gen_test
async def test_head_204_and_304_carry_no_body(proxy_gw, stubs):
    response = await fetch(proxy_gw, "/api/chats/bytes/1000", method="HEAD")
    assert response.code == 200 and response.body == b""
    assert response.headers["Content-Length"] == "1000"

    def no_content(record, handler):
        handler.set_status(int(record.path.rsplit("/", 1)[1]))
        handler.set_header("ETag", '"v1"')
        handler.finish()

    stubs.hooks[("GET", "/nc/204")] = stubs.hooks[("GET", "/nc/304")] = no_content
    for code in (204, 304):
        response = await fetch(proxy_gw, f"/api/chats/nc/{code}", headers={"If-None-Match": '"v1"'})
        assert response.code == code and response.body == b""
        assert response.headers["ETag"] == '"v1"'
    # The gateway never makes up an ETag (or a 304) of its own, even for an empty 200.
    async def empty(record, handler):
        await handler.flush()  # headers out first: the stub adds no ETag either
        handler.finish()

    stubs.hooks[("GET", "/empty")] = empty
    response = await fetch(proxy_gw, "/api/chats/empty")
    assert response.code == 200 and response.body == b"" and "Etag" not in response.headers
