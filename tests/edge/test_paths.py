"""Path normalisation and routing: pure unit tests of paths.py, then the same rules on the wire."""

import json

import pytest
from tornado.httpclient import AsyncHTTPClient

from harness import GatewayProcess, make_token
from tornado_gateway.config import Route
from tornado_gateway.edge.paths import PathError, remove_dot_segments, resolve, split_segments

ROUTES = tuple(sorted((
    Route("/api/auth", "auth", "http://a:1", "", 1, 1, 1),
    Route("/api/users", "users", "http://u:2", "/users", 1, 1, 1),
    Route("/api/users/admin", "admin", "http://ad:3", "", 1, 1, 1),
    Route("/api", "api", "http://api:4", "/v1", 1, 1, 1),
), key=lambda r: len(r.prefix), reverse=True))

# Each of these would change the route/prefix it lands on, or is ambiguous for an upstream.
BAD_PATHS = [
    "/api/users/../auth/x",
    "/api/users/%2e%2e/auth",
    "/api/users/%2E%2e/auth",
    "/api/users/.%2E/auth",
    "/api/users/..%2fauth",
    "/api/users%2f..",
    "/api/users/%5c..",
    "/api/users/%2F",
    "/api/users/a\\..\\..\\auth",
    "//api/users",
    "/api/users//evil.com",
    "/api/users/%00",
    "/api/users/%zz",
    "/api/users/a b",
    "/api/users/\u00e9",
    "/api/./users/x",
    "/api/users/a/../../auth/x",
]


# -- unit -----------------------------------------------------------------------

def test_prefix_replaced_by_upstream_path_and_longest_prefix_wins():
    assert resolve(ROUTES, "/api/users/42").upstream_path == "/users/42"
    assert resolve(ROUTES, "/api/users").upstream_path == "/users"
    assert resolve(ROUTES, "/api/users/").upstream_path == "/users/"
    assert resolve(ROUTES, "/api/auth").upstream_path == "/"
    assert resolve(ROUTES, "/api/auth/login").upstream_path == "/login"
    admin = resolve(ROUTES, "/api/users/admin/x")
    assert (admin.route.service, admin.upstream_path) == ("admin", "/x")


def test_prefix_matches_only_at_a_segment_boundary():
    assert resolve(ROUTES, "/api/usersX").route.service == "api"  # falls back to /api, not users
    assert resolve(ROUTES, "/api/usersX").upstream_path == "/v1/usersX"
    assert resolve(ROUTES, "/apiX") is None
    assert resolve(ROUTES, "/") is None


def test_harmless_dot_segments_resolved_inside_the_prefix():
    assert resolve(ROUTES, "/api/users/a/../b").upstream_path == "/users/b"
    assert resolve(ROUTES, "/api/users/a/%2e%2E/b/./c").upstream_path == "/users/b/c"
    assert resolve(ROUTES, "/api/users/a/..").upstream_path == "/users/"
    assert resolve(ROUTES, "/api/users/a/../b").path == "/api/users/b"


@pytest.mark.parametrize("path", BAD_PATHS)
def test_escaping_or_ambiguous_paths_are_refused(path):
    with pytest.raises(PathError):
        resolve(ROUTES, path)


def test_dot_segments_that_move_to_a_longer_prefix_are_refused():
    # Stays under /api but would land on /api/users once resolved.
    with pytest.raises(PathError):
        resolve(ROUTES, "/api/x/../users/1")


def test_remove_dot_segments_follows_rfc3986():
    assert remove_dot_segments(["a", "b", "..", "c", ".", "d"]) == ["a", "c", "d"]
    assert remove_dot_segments(["a", "."]) == ["a", ""]
    with pytest.raises(PathError):
        remove_dot_segments([".."])


def test_split_segments_keeps_encoding_and_trailing_slash():
    assert split_segments("/a/%41b/") == ["a", "%41b", ""]
    with pytest.raises(PathError):
        split_segments("relative")


# -- wire -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def paths_gateway(stub_upstreams):
    process = GatewayProcess({**stub_upstreams.env(), "RATE_LIMIT_ENABLED": "false",
                              "USERS_SERVICE_URL": stub_upstreams.url("users", "/users")}).start()
    yield process
    process.stop()


def raw_get(port: int, target: str) -> tuple[int, dict]:
    """GET with the request target sent byte-for-byte (no client-side normalisation)."""
    import socket

    token = make_token("u1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
                     f"Connection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, (json.loads(body) if body.startswith(b"{") else {})


@pytest.mark.parametrize("path", [p for p in BAD_PATHS if " " not in p])  # a space: Tornado's own 400
def test_wire_bad_paths_get_400_and_reach_no_upstream(paths_gateway, stubs, path):
    status, body = raw_get(paths_gateway.port, path)
    assert status == 400
    assert body["error"]["code"] == "BAD_PATH" and body["error"]["requestId"]
    assert stubs.received() == []


def test_wire_dot_segments_outside_every_route_are_400_not_forwarded(paths_gateway, stubs):
    status, body = raw_get(paths_gateway.port, "/x/../api/users/1")
    assert status == 400 and body["error"]["code"] == "BAD_PATH"
    assert stubs.received() == []


@pytest.mark.parametrize("path, upstream_uri", [
    ("/api/users/a/../b", "/users/b"),
    ("/api/users/a/%2e%2E/b?q=%2e%2e", "/users/b?q=%2e%2e"),
    ("/api/chats/x/./y/", "/x/y/"),
])
def test_wire_harmless_dot_segments_forwarded_normalised(paths_gateway, stubs, path, upstream_uri):
    status, _ = raw_get(paths_gateway.port, path)
    assert status == 200
    assert [r.uri for r in stubs.received()] == [upstream_uri]


def test_wire_absolute_form_and_control_characters_refused(paths_gateway, stubs):
    status, _ = raw_get(paths_gateway.port, "http://evil.com/api/users/1")
    assert status in (400, 404)
    status, body = raw_get(paths_gateway.port, "/api/users/1?a=%00&b=\x01")
    assert status == 400
    assert stubs.received() == []


@pytest.mark.gen_test
async def test_wire_encoded_characters_other_than_slashes_pass_untouched(paths_gateway, stubs):
    token = make_token("u1")
    response = await AsyncHTTPClient().fetch(
        paths_gateway.url("/api/users/caf%C3%A9/%41?x=%2F"), headers={"Authorization": f"Bearer {token}"},
        raise_error=False)
    assert response.code == 200
    assert [r.uri for r in stubs.received()] == ["/users/caf%C3%A9/%41?x=%2F"]
