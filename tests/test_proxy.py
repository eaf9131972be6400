"""The reverse proxy on the wire: routing, headers, bodies both ways, upstream failures.

A real gateway process in front of the recording stub upstreams; special
upstreams (a dead port, a server that hangs up) are real sockets too.
"""

import asyncio
import gzip
import hashlib
import json
import re
import socket
import threading
import time

import pytest
import tornado.httpserver
import tornado.web
from tornado.httpclient import AsyncHTTPClient

from harness import ORIGIN, GatewayProcess, free_port, make_token
from internal_client import AUTH_ENV
from internal_client import fetch as internal_fetch

MIB = 1024 * 1024
LIMIT = 65536
MEDIA_LIMIT = 32 * MIB
TOKEN = make_token("u1")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class HeadOnlyUpstream:
    """A raw TCP upstream that reads a request head and counts it, then never answers: it
    hangs up at once, or with ``hold`` keeps the connection open, reading nothing more
    (a slow upstream), until closed."""

    def __init__(self, hold: bool = False):
        self.hold = threading.Event() if hold else None
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.hold is not None:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    self.requests += 1
                if self.hold is not None:
                    self.hold.wait(60)

    def close(self):
        if self.hold is not None:
            self.hold.set()
        self.sock.close()


@pytest.fixture(scope="module")
def hangup():
    server = HeadOnlyUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def dead_ports():
    return {"down": free_port(), "downpost": free_port()}


@pytest.fixture(scope="module")
def proxy_gw(stub_upstreams, hangup, dead_ports):
    routes = ",".join([
        "/api/slowpoke=chats;timeout=0.5",
        f"/api/down=http://127.0.0.1:{dead_ports['down']}",
        f"/api/downpost=http://127.0.0.1:{dead_ports['downpost']}",
        f"/api/hangup=http://127.0.0.1:{hangup.port}",
    ])
    process = GatewayProcess({
        **stub_upstreams.env(), **AUTH_ENV,
        "USERS_SERVICE_URL": stub_upstreams.url("users", "/users"),
        "MAX_BODY_SIZE": str(LIMIT), "MEDIA_MAX_BODY_SIZE": str(MEDIA_LIMIT),
        "RATE_LIMIT_ENABLED": "false", "CIRCUIT_FAILURES": "100",
        "GATEWAY_ROUTES": routes,
    }).start()
    yield process
    process.stop()


async def fetch(gw, path, method="GET", headers=None, auth=True, **kwargs):
    all_headers = {**(AUTH if auth else {}), **(headers or {})}
    kwargs.setdefault("follow_redirects", False)
    kwargs.setdefault("decompress_response", False)
    kwargs.setdefault("request_timeout", 60)
    return await AsyncHTTPClient().fetch(gw.url(path), method=method, headers=all_headers,
                                         raise_error=False, **kwargs)


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes exactly as given, return everything read until EOF (or a complete response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            received += chunk
            if _complete(received):
                break
    return received


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return bool(sep and match and len(body) >= int(match.group(1)))


def parse_raw(data: bytes) -> tuple[int, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


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


# -- bodies -------------------------------------------------------------------------------

@pytest.mark.gen_test
async def test_body_with_content_length_over_the_limit_is_413_and_never_forwarded(proxy_gw, stubs):
    for expect in (True, False):  # waiting for 100 Continue, or sending the body right away
        response = await fetch(proxy_gw, "/api/chats/upload", method="POST", body=b"a" * (LIMIT + 1),
                               expect_100_continue=expect)
        assert response.code == 413
        assert json.loads(response.body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
    # A huge declared length is refused from the head alone.
    data = raw_exchange(proxy_gw.port, (f"POST /api/chats/upload HTTP/1.1\r\nHost: gw\r\n"
                                        f"Authorization: Bearer {TOKEN}\r\n"
                                        f"Content-Length: {50 * MIB}\r\n\r\n").encode())
    assert parse_raw(data)[0] == 413
    assert stubs.received() == []


@pytest.mark.gen_test(timeout=20)
async def test_refusals_of_bodyless_and_small_requests_keep_the_connection(proxy_gw, stubs):
    """A 401, a 404 with a small body and a 413 just over the limit are answered on the
    same keep-alive connection, which then still carries a proxied request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_gw.port)

    async def exchange(raw: bytes) -> tuple[int, dict, bytes]:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status, headers, _ = parse_raw(head)
        return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))

    auth = f"Authorization: Bearer {TOKEN}\r\n"
    status, headers, body = await exchange(b"GET /api/users/echo HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status == 401 and json.loads(body)["error"]["code"] == "UNAUTHENTICATED"
    assert headers.get("connection", "").lower() != "close"
    status, _, body = await exchange(f"POST /nowhere HTTP/1.1\r\nHost: gw\r\n{auth}"
                                     f"Content-Length: 10\r\n\r\n0123456789".encode())
    assert status == 404 and json.loads(body)["error"]["code"] == "NOT_FOUND"
    status, _, body = await exchange(f"POST /api/chats/upload HTTP/1.1\r\nHost: gw\r\n{auth}"
                                     f"Content-Length: {LIMIT + 1}\r\n\r\n".encode() + b"a" * (LIMIT + 1))
    assert status == 413 and json.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
    status, _, _ = await exchange(f"GET /api/users/echo HTTP/1.1\r\nHost: gw\r\n{auth}\r\n".encode())
    assert status == 200
    writer.close()
    assert [r.path for r in stubs.received()] == ["/users/echo"]  # only the last one went upstream


@pytest.mark.parametrize("path, auth, status, code", [
    ("/api/chats/upload", True, 413, "PAYLOAD_TOO_LARGE"),  # declared far beyond the limit
    ("/api/chats/upload", False, 401, "UNAUTHENTICATED"),
    ("/nowhere", True, 404, "NOT_FOUND"),
])
@pytest.mark.gen_test(timeout=20)
async def test_refusal_before_the_body_reaches_a_client_still_sending_it(proxy_gw, stubs, path, auth,
                                                                         status, code):
    """Answered from the head while the body is on its way: the client reads the whole JSON
    error and then EOF, never a connection reset (the gateway's lingering close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_gw.port)
    head = f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {50 * MIB}\r\n"
    if auth:
        head += f"Authorization: Bearer {TOKEN}\r\n"
    writer.write(head.encode() + b"\r\n" + b"z" * (512 * 1024))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)  # to EOF; a reset raises here
    got, headers, body = parse_raw(data)
    assert got == status and headers["connection"] == "close"
    assert len(body) == int(headers["content-length"]) and json.loads(body)["error"]["code"] == code
    writer.close()
    assert stubs.received() == []


@pytest.mark.gen_test
async def test_chunked_body_over_the_limit_is_413_and_the_upstream_request_aborted(proxy_gw, stubs):
    piece = 40000
    data = (f"POST /api/chats/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n").encode()
    data += (b"%x\r\n" % piece + b"b" * piece + b"\r\n") * 2 + b"0\r\n\r\n"
    status, _, body = parse_raw(raw_exchange(proxy_gw.port, data))
    assert status == 413 and json.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
    await asyncio.sleep(0.2)
    assert stubs.received() == []  # its request never completed


@pytest.mark.gen_test
async def test_chunked_body_under_the_limit_arrives_whole(proxy_gw, stubs):
    data = (f"POST /api/chats/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    data += (b"2710\r\n" + b"c" * 10000 + b"\r\n") * 3 + b"0\r\n\r\n"
    status, _, body = parse_raw(raw_exchange(proxy_gw.port, data))
    assert status == 200 and json.loads(body)["body_len"] == 30000
    assert stubs.received()[0].body == b"c" * 30000


@pytest.mark.gen_test
async def test_expect_100_continue_is_answered_by_the_gateway_not_forwarded(proxy_gw, stubs):
    response = await fetch(proxy_gw, "/api/chats/upload", method="POST", body=b"d" * 5000,
                           expect_100_continue=True)
    assert response.code == 200
    seen = stubs.received("chats")[0]
    assert seen.body == b"d" * 5000 and "expect" not in seen.headers


@pytest.mark.gen_test
async def test_cors_preflight_on_a_proxied_route_is_answered_by_the_gateway(proxy_gw, stubs):
    response = await fetch(proxy_gw, "/api/chats/x", method="OPTIONS", auth=False, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert stubs.received() == []


@pytest.mark.gen_test
@pytest.mark.parametrize("framing", [
    "Content-Length: 5\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Content-Length: 5, 6",
    "Content-Length: -5",
], ids=["cl_and_te", "te_not_chunked", "two_lengths", "negative"])
async def test_ambiguous_body_framing_is_400_and_never_forwarded(proxy_gw, stubs, framing):
    data = (f"POST /api/chats/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"{framing}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode()
    assert parse_raw(raw_exchange(proxy_gw.port, data))[0] == 400
    assert stubs.received() == []


@pytest.mark.gen_test
async def test_get_with_a_chunked_body_is_411(proxy_gw, stubs):
    data = (f"GET /api/chats/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode()
    assert parse_raw(raw_exchange(proxy_gw.port, data))[0] == 411
    assert stubs.received() == []


@pytest.mark.gen_test(timeout=60)
async def test_media_route_accepts_a_large_upload_and_it_arrives_complete(proxy_gw, stubs):
    body = bytes(range(256)) * (20 * MIB // 256)
    response = await fetch(proxy_gw, "/api/media/upload", method="POST", body=body,
                           headers={"Content-Type": "application/octet-stream"})
    assert response.code == 200, response.body[:200]
    received = stubs.received("media")[0].body
    assert len(received) == len(body)
    assert hashlib.sha256(received).digest() == hashlib.sha256(body).digest()


@pytest.mark.gen_test(timeout=60)
async def test_chunked_upload_streams_through_complete(proxy_gw, stubs):
    chunk = b"0123456789abcdef" * 4096  # 64 KiB

    async def producer(write):
        for _ in range(80):  # 5 MiB
            await write(chunk)

    response = await fetch(proxy_gw, "/api/media/upload", method="PUT", body_producer=producer)
    assert response.code == 200
    assert stubs.received("media")[0].body == chunk * 80


@pytest.mark.gen_test(timeout=60)
async def test_large_download_arrives_complete(proxy_gw, stubs):
    size = 50 * MIB
    received = 0
    wrong = 0

    def on_chunk(chunk):
        nonlocal received, wrong
        received += len(chunk)
        wrong += len(chunk) - chunk.count(b"z")

    response = await fetch(proxy_gw, f"/api/media/bytes/{size}", streaming_callback=on_chunk)
    assert response.code == 200
    assert response.headers["Content-Length"] == str(size)
    assert received == size and wrong == 0


def rss_kib(gw) -> int:
    with open(f"/proc/{gw.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def until_still(read, quiet: float = 1.0, timeout: float = 30.0):
    """Wait until ``read()`` stops changing for ``quiet`` seconds; return its value."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"still moving after {timeout}s: {last}")


@pytest.mark.gen_test(timeout=90)
async def test_a_client_that_does_not_read_holds_the_upstream_back(proxy_gw, stubs):
    """Download backpressure: the upstream stalls long before its 256 MiB are sent, the
    gateway's memory stays bounded, and the whole body arrives once the client reads."""
    size = 256 * MIB
    progress = {"sent": 0}

    async def stream(record, handler):
        handler.set_header("Content-Length", str(size))
        chunk = b"y" * 65536
        while progress["sent"] < size:
            handler.write(chunk)
            await handler.flush()
            progress["sent"] += len(chunk)
        handler.finish()

    stubs.hooks[("GET", "/big")] = stream
    rss_before = rss_kib(proxy_gw)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_gw.port)
    writer.write(f"GET /api/media/big HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                 .encode())
    stalled_at = await until_still(lambda: progress["sent"])
    assert 0 < stalled_at < 64 * MIB  # the kernels' socket buffers, not the body
    assert rss_kib(proxy_gw) - rss_before < 32 * 1024
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    received = 0
    while received < size:
        received += len(await asyncio.wait_for(reader.read(1 << 20), 30))
    assert received == size and progress["sent"] == size
    writer.close()


@pytest.mark.gen_test(timeout=90)
async def test_an_upstream_that_does_not_read_holds_the_client_back(start_gateway, stubs):
    """Upload backpressure: with the upstream not reading, the gateway stops reading the
    client's 1 GiB body after a bounded amount, and its memory stays bounded."""
    upstream = HeadOnlyUpstream(hold=True)
    gw = start_gateway({**AUTH_ENV, "RATE_LIMIT_ENABLED": "false", "GATEWAY_ROUTES":
                        f"/api/sink=http://127.0.0.1:{upstream.port};max_body={2 << 30};timeout=60"})
    try:
        rss_before = rss_kib(gw)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(f"POST /api/sink/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Length: {1 << 30}\r\n\r\n".encode())
        sent = {"bytes": 0}

        async def send_forever():
            chunk = b"u" * 65536
            while True:
                writer.write(chunk)
                await writer.drain()
                sent["bytes"] += len(chunk)

        sender = asyncio.ensure_future(send_forever())
        stalled_at = await until_still(lambda: sent["bytes"])
        assert 0 < stalled_at < 64 * MIB
        assert rss_kib(gw) - rss_before < 32 * 1024
        sender.cancel()
        writer.close()
    finally:
        upstream.close()


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
