"""Property-based tests over the real wire (issue 7): two gateway nodes on a real Redis, hostile
generated inputs, bounded example counts. Whatever arrives: never a 5xx from the gateway,
never an INTERNAL ack, the socket stays open, no identity header reaches a service."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_fakes import SocketClient
from harness import make_token
from hostile_strategies import INGRESS_BODY, ODD_CHAR, PATH, RAW_JSON
from internal_client import basic_header, running_nodes
from robust_support import RawJSON, _RawPacket
from tornado_gateway import codec

WIRE = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ENV = {"SOCKET_RATE_MESSAGE": "100000/1", "SOCKET_RATE_JOIN": "100000/1", "SOCKET_RATE_TYPING": "100000/1",
       "RATE_LIMIT_USER": "100000/1", "RATE_LIMIT_IP": "100000/1", "RATE_LIMIT_AUTH": "100000/1"}
TOKEN = make_token("prop-user")


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams, env=ENV)


def exchange(port: int, head: bytes, body: bytes = b"") -> int | None:
    """One raw HTTP/1.1 exchange; the status, or None when the server closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
    return int(data.split(b" ", 2)[1])


@WIRE
@given(body=INGRESS_BODY, as_surrogatepass=st.booleans())
def test_ingress_never_answers_5xx(nodes, body, as_surrogatepass):
    raw = body.encode("utf-8", "surrogatepass" if as_surrogatepass else "replace")
    auth = basic_header()["Authorization"]
    for node in nodes:
        head = (f"POST /internal/events HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\nConnection: close\r\n\r\n")
        status = exchange(node.internal_port, head.encode(), raw)
        assert status in (202, 400, 413), (status, body[:200])


WIRE_PATH = st.one_of(PATH, st.text(alphabet=ODD_CHAR, max_size=20).map(lambda t: "/api/users/" + t)).filter(
    lambda p: not any(c in p for c in "\r\n "))


@WIRE
@given(path=WIRE_PATH, authenticated=st.booleans())
def test_public_listener_never_answers_5xx_on_hostile_paths(nodes, stubs, path, authenticated):
    auth = f"Authorization: Bearer {TOKEN}\r\n" if authenticated else ""
    head = (b"GET " + path.encode("utf-8", "surrogatepass") + b" HTTP/1.1\r\nHost: gw\r\n"
            + auth.encode() + b"Connection: close\r\n\r\n")
    status = exchange(nodes[0].port, head)
    assert status is None or status < 500, (status, path)


HEADER_WORDS = st.tuples(st.sampled_from(["x", "X"]), st.sampled_from(["-", "_"]),
                         st.sampled_from(["user", "USER", "User", "uSeR"]), st.sampled_from(["-", "_", ""]),
                         st.sampled_from(["id", "Id", "ID", "roles", "Email", ""]))


@WIRE
@given(spellings=st.lists(HEADER_WORDS.map("".join), min_size=1, max_size=4), authenticated=st.booleans())
def test_identity_headers_in_any_spelling_never_reach_a_service(nodes, stubs, spellings, authenticated):
    request_id = uuid.uuid4().hex
    lines = "".join(f"{name}: admin\r\n" for name in spellings)
    auth = f"Authorization: Bearer {TOKEN}\r\n" if authenticated else ""
    path = "/api/users/me" if authenticated else "/api/auth/me"
    head = (f"GET {path} HTTP/1.1\r\nHost: gw\r\nX-Request-ID: {request_id}\r\n{auth}{lines}"
            "Connection: close\r\n\r\n").encode()
    assert exchange(nodes[1].port, head) == 200
    (record,) = [r for r in stubs.received() if r.headers.get("x-request-id") == request_id]
    identity = [(n, v) for n, v in record.header_list if n.lower().replace("_", "-").startswith("x-user")]
    assert identity == ([("X-User-Id", "prop-user")] if authenticated else []), (spellings, identity)


# -- socket events -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def socket_loop(nodes):
    loop = asyncio.new_event_loop()
    client = SocketClient()
    client.sio.packet_class = _RawPacket
    loop.run_until_complete(client.connect(nodes[0], TOKEN))
    yield loop, client
    loop.run_until_complete(client.close())
    loop.close()


EVENT = st.sampled_from(["message:send", "chat:join", "chat:leave", "chat:create", "message:read",
                         "typing:start", "typing:stop", "reaction:set", "auth:hello", "unknown:event"])


SENDABLE_JSON = RAW_JSON.filter(lambda raw: codec.valid_unicode(raw))  # a websocket frame is UTF-8


@WIRE
@given(event=EVENT, raw=SENDABLE_JSON)
def test_socket_events_never_get_internal_and_the_socket_stays_open(socket_loop, stubs, event, raw):
    loop, client = socket_loop
    payload = RawJSON(raw) if raw.strip() else None
    reply = loop.run_until_complete(client.call(event, payload, timeout=10))
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert reply["error"]["code"] != "INTERNAL", (event, raw[:200], reply)
    assert client.sio.connected
