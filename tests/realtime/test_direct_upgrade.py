"""A plain websocket connect of /socket.io/ is answered below the Tornado handler
(realtime/wire/direct.py): the same 101 as the handler's, the same socket afterwards, any
odd spelling the handler accepts; everything else is still the handler's answer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import types

import pytest
from tornado import httputil

from harness import ORIGIN, GatewayProcess, make_token
from internal_client import AUTH_ENV, metric_value
from tornado_gateway.edge.security_headers import SECURITY_HEADERS
from tornado_gateway.realtime.wire import LeanSocket
from tornado_gateway.realtime.wire.direct import DirectUpgrade

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


async def _upgrade(port: int, head: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str, dict]:
    """Send a request head; read the answer's head: (reader, writer, status line, headers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n")
    answer = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status, _, rest = answer.partition("\r\n")
    headers = httputil.HTTPHeaders.parse(rest)
    return reader, writer, status, dict(headers.get_all())


def _frame(text: str) -> bytes:
    """A masked client text frame."""
    payload, mask = text.encode(), os.urandom(4)
    size = len(payload)
    head = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _text(reader: asyncio.StreamReader) -> str:
    """The next server text frame (unmasked, short)."""
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    return (await reader.readexactly(size)).decode()


def _request(key: str, *extra: str, query: str = "EIO=4&transport=websocket") -> str:
    lines = [f"GET /socket.io/?{query} HTTP/1.1", "Host: gw.test", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             f"Origin: {ORIGIN}", *extra]
    return "\n".join(lines) + "\n"


async def _connects(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str) -> None:
    """Engine.IO open, then a Socket.IO connect with a token is answered."""
    opened = await _text(reader)
    assert opened.startswith("0{") and json.loads(opened[1:])["upgrades"] == []
    writer.write(_frame("40" + json.dumps({"token": make_token(user)})))
    answer = await _text(reader)
    assert answer.startswith("40{") and "sid" in json.loads(answer[2:]), answer


@pytest.mark.gen_test(timeout=30)
async def test_the_direct_101_is_the_handlers_and_the_socket_connects(gateway):
    key = base64.b64encode(os.urandom(16)).decode()
    reader, writer, status, direct = await _upgrade(gateway.port, _request(key))
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert direct["Sec-Websocket-Accept"] == _accept(key)
    for name, value in SECURITY_HEADERS:  # SPEC §4: on every response
        assert direct[httputil._normalize_header(name)] == value
    assert (direct["Vary"], direct["Upgrade"], direct["Connection"]) == ("Origin", "websocket", "Upgrade")
    assert "Sec-Websocket-Extensions" not in direct  # no compression, though the client offers it
    await _connects(reader, writer, "direct-1")
    # A body on the GET is not the direct path's case: the Tornado handler answers it, and
    # both answers carry the same headers in the same order (the date aside).
    reader2, writer2, status2, handled = await _upgrade(gateway.port, _request(key, "Content-Length: 0"))
    assert status2 == status
    assert [k for k in handled if k != "Date"] == [k for k in direct if k != "Date"]
    assert {k: v for k, v in handled.items() if k != "Date"} == {k: v for k, v in direct.items() if k != "Date"}
    await _connects(reader2, writer2, "direct-2")
    for w in (writer, writer2):
        w.close()


@pytest.mark.gen_test(timeout=30)
async def test_odd_spellings_the_handler_accepts_are_accepted(gateway):
    key = base64.b64encode(os.urandom(16)).decode()
    head = (f"GET /socket.io/?t=PqR&EIO=4&transport=websocket HTTP/1.1\nhost: gw.test\nupgrade: WebSocket\n"
            f"connection: keep-alive, Upgrade\nsec-websocket-key: {key}\nsec-websocket-version: 13\n"
            f"sec-websocket-extensions: permessage-deflate; client_max_window_bits\norigin: {ORIGIN}\n")
    reader, writer, status, headers = await _upgrade(gateway.port, head)
    assert status.startswith("HTTP/1.1 101 ") and headers["Sec-Websocket-Accept"] == _accept(key)
    await _connects(reader, writer, "odd-1")
    writer.close()


@pytest.mark.gen_test(timeout=30)
async def test_what_the_direct_path_leaves_alone_gets_the_handlers_answers(gateway):
    key = base64.b64encode(os.urandom(16)).decode()
    _, writer, status, headers = await _upgrade(gateway.port, _request(key).replace(
        "Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"))
    assert status.startswith("HTTP/1.1 426 ") and headers["Sec-Websocket-Version"] == "13"
    writer.close()
    reader, writer, status, headers = await _upgrade(gateway.port, _request(key, query="EIO=3&transport=websocket"))
    assert status.startswith("HTTP/1.1 400 ")  # an old protocol: refused before the upgrade
    body = await reader.readexactly(int(headers["Content-Length"]))
    assert json.loads(body)["error"]["code"] == "VALIDATION_FAILED"
    writer.close()
    _, writer, status, _ = await _upgrade(gateway.port, "GET /socket.io/?EIO=3&transport=polling HTTP/1.1\n"
                                                        f"Host: gw.test\nOrigin: {ORIGIN}\n")
    assert status.startswith("HTTP/1.1 400 ")  # and on polling
    writer.close()
    _, writer, status, _ = await _upgrade(gateway.port, _request(key).replace(f"Origin: {ORIGIN}",
                                                                             "Origin: http://evil.test"))
    assert status.startswith("HTTP/1.1 101 ")  # the handler's refusal: a connect_error after the open
    writer.close()


def _realtime(draining: bool = False) -> types.SimpleNamespace:
    origins = [ORIGIN]
    return types.SimpleNamespace(
        gateway=types.SimpleNamespace(security_headers=SECURITY_HEADERS, draining=draining),
        settings=types.SimpleNamespace(socket_max_payload=1000), origin_allowed=lambda o: o is None or o in origins)


_GOOD = {"Host": "h", "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "a2V5a2V5a2V5a2V5a2V5aw==",
         "Sec-WebSocket-Version": "13", "Origin": ORIGIN}


@pytest.mark.parametrize("line, change, taken", [
    ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", {}, True),
    ("GET /socket.io/?EIO=4&transport=websocket&t=x HTTP/1.1", {"Origin": None}, True),  # no Origin: a native client
    ("GET /socket.io/?transport=websocket&EIO=%34 HTTP/1.1", {}, True),  # other spellings: read as engineio does
    ("GET /socket.io/?EIO=4&transport=websocket&sid=abc HTTP/1.1", {}, False),  # an upgrade from polling
    ("GET /socket.io/?sid=abc&EIO=4&transport=websocket HTTP/1.1", {}, False),
    ("GET /socket.io/?EIO=4&transport=polling HTTP/1.1", {}, False),
    ("GET /socket.io/?EIO=3&transport=websocket HTTP/1.1", {}, False),
    ("GET /socket.io?EIO=4&transport=websocket HTTP/1.1", {}, False),
    ("POST /socket.io/?EIO=4&transport=websocket HTTP/1.1", {}, False),
    ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.0", {}, False),
    ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", {"Upgrade": "h2c"}, False),
    ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", {"Connection": "keep-alive"}, False),
    ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", {"Sec-WebSocket-Version": "8"}, False),
    ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", {"Sec-WebSocket-Key": None}, False),
    ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", {"Host": None}, False),
    ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", {"Content-Length": "0"}, False),
    ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", {"Transfer-Encoding": "chunked"}, False),
    ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", {"Origin": "http://evil.test"}, False),
    ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1",
     {"Origin": None, "Sec-WebSocket-Origin": "http://evil.test"}, False),
])
def test_which_requests_the_direct_path_takes(line, change, taken, monkeypatch):
    monkeypatch.setattr(LeanSocket, "writer", object())  # a node's manager is configured
    headers = httputil.HTTPHeaders()
    for name, value in {**_GOOD, **change}.items():
        if value is not None:
            headers.add(name, value)
    upgrade = DirectUpgrade(_realtime())
    assert upgrade._acceptable(httputil.parse_request_start_line(line), headers) is taken
    assert DirectUpgrade(_realtime(draining=True))._acceptable(
        httputil.parse_request_start_line(line), headers) is False  # draining: the handler's 503


@pytest.mark.gen_test
async def test_the_public_router_offers_socket_io_upgrades_to_the_direct_path():
    from tornado_gateway import config
    from tornado_gateway.app import Gateway

    gateway = Gateway(config.load(["gw"], {"REDIS_URL": "memory://", "ALLOWED_ORIGINS": ORIGIN}))
    router = gateway.public_router()
    assert isinstance(router.upgrades, DirectUpgrade) and router.upgrades.realtime is gateway.realtime


async def _eventually(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never happened")


@pytest.fixture(scope="module")
def metered(stub_upstreams):
    """A gateway whose /metrics this module may read."""
    process = GatewayProcess({**stub_upstreams.env(), **AUTH_ENV}).start()
    yield process
    process.stop()


@pytest.mark.gen_test(timeout=60)
async def test_clients_that_vanish_or_send_garbage_leave_nothing_behind(metered):
    gateway = metered

    upgrades = dict(name="gateway_http_requests_total", route="socket.io", method="GET", status="101")
    before = await metric_value(gateway, **upgrades)
    open_before = await metric_value(gateway, "gateway_open_sockets")
    key = base64.b64encode(os.urandom(16)).decode()
    token_frame = _frame("40" + json.dumps({"token": make_token("vanishing")}))
    writers = []
    for i in range(60):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        head = _request(key).replace("\n", "\r\n").encode() + b"\r\n"
        if i % 3 == 0:  # the connect right behind the head, then gone
            writer.write(head + token_frame)
        elif i % 3 == 1:  # answered, connected, then gone without a close frame
            writer.write(head)
            await reader.readuntil(b"\r\n\r\n")
            await _text(reader)
            writer.write(token_frame)
        else:  # answered, then bytes that are no websocket frame (reserved bits, unmasked)
            writer.write(head)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"\x71\x05hello")
        writers.append(writer)
    for writer in writers:
        writer.close()

    async def all_gone() -> bool:
        return await metric_value(gateway, "gateway_open_sockets") == open_before

    await _eventually(all_gone)  # every socket that connected was let go
    assert await metric_value(gateway, **upgrades) == before + 60  # each 101 counted once
    reader, writer, status, _ = await _upgrade(gateway.port, _request(key))
    assert status.startswith("HTTP/1.1 101 ")
    await _connects(reader, writer, "after-the-noise")  # and the node serves the next one
    writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_101_comes_before_any_answer_to_a_frame_sent_right_behind_the_head(gateway):
    # a client that does not wait for the 101: its ping is answered only after the 101 and the
    # Engine.IO open (reading starts once both are written)
    ping = bytes([0x89, 0x82]) + b"\x01\x02\x03\x04" + bytes(b ^ m for b, m in zip(b"hi", b"\x01\x02"))
    for _ in range(20):
        key = base64.b64encode(os.urandom(16)).decode()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(_request(key).replace("\n", "\r\n").encode("latin-1") + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.001)
        writer.write(ping)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 "), head[:40]
        assert (await _text(reader)).startswith("0{")  # the open, then the pong
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x8a\x02hi"
        writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_client_that_half_closes_right_behind_the_head_still_gets_the_101(gateway):
    for _ in range(10):
        key = base64.b64encode(os.urandom(16)).decode()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(_request(key).replace("\n", "\r\n").encode("latin-1") + b"\r\n")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 101 "), answer[:40]
        writer.close()


class _InProcess:
    """A gateway in this test's process behind the public listener (real sockets), so its
    tables can be looked at."""

    def __init__(self, env: dict) -> None:
        from harness import ACCESS_SECRET
        from tornado_gateway import config
        from tornado_gateway.app import Gateway

        self.gateway = Gateway(config.load(["gw"], {"ALLOWED_ORIGINS": ORIGIN,
                                                    "JWT_ACCESS_SECRET": ACCESS_SECRET, **env}))
        self.realtime = self.gateway.realtime

    async def __aenter__(self) -> "_InProcess":
        import socket

        from tornado.httpserver import HTTPServer

        from tornado_gateway.proxy.listener import PublicListener

        await self.gateway.start()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.listener = PublicListener(HTTPServer(self.gateway.public_router()), self.realtime.upgrades, 30.0)
        await self.listener.start([self.sock], 128)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.listener.stop()
        await self.gateway.close()
        self.sock.close()

    async def opened(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A websocket upgraded and opened (the Engine.IO open read)."""
        reader, writer, status, _ = await _upgrade(self.port, _request(base64.b64encode(os.urandom(16)).decode()))
        assert status.startswith("HTTP/1.1 101"), status
        assert (await _text(reader)).startswith("0{")
        return reader, writer


@pytest.mark.gen_test(timeout=30)
async def test_a_closed_socket_is_let_go_as_its_disconnect_is_handled():
    # engineio's service task drops a closed socket from its table only when its sweep
    # passes it (up to twice PING_TIMEOUT later) and the Pinger on its slot's next turn (up
    # to PING_INTERVAL later): after a reconnect storm, each closed socket, its handler and
    # request stayed on the heap that long.
    async with _InProcess({"REDIS_URL": "memory://"}) as node:
        realtime = node.realtime
        for closing in ("abrupt", "close frame"):
            reader, writer = await node.opened()
            writer.write(_frame("40" + json.dumps({"token": make_token("u-let-go")})))
            assert (await _text(reader)).startswith("40{")
            assert len(realtime.sio.eio.sockets) == 1 and sum(map(len, realtime.pinger.slots)) == 1
            if closing == "close frame":
                writer.write(b"\x88\x82" + b"\x00" * 4 + (1000).to_bytes(2, "big"))  # masked with zeros
            writer.close()
            # well within the 20 s and 25 s they used to stay
            await _eventually(_async(lambda: not realtime.sio.eio.sockets), timeout=3)
            await _eventually(_async(lambda: not any(realtime.pinger.slots)), timeout=3)
            assert not realtime.states, closing


@pytest.mark.gen_test(timeout=60)
async def test_a_client_gone_while_its_connect_is_decided_leaves_no_ghost(own_redis):
    # The connect awaits Redis (rate check, the user room's subscription, the presence
    # claim); a client that closes meanwhile got no disconnect from python-socketio (its
    # socket was still connecting), so its state stayed: the user online for good, the
    # socket counted against MAX_CONNECTIONS_PER_IP and in the open-sockets gauge.
    async with _InProcess({"REDIS_URL": own_redis.url, "MAX_CONNECTIONS_PER_IP": "3"}) as node:
        realtime = node.realtime
        for n in range(6):  # twice the per-IP cap: ghosts would soon refuse everyone
            reader, writer = await node.opened()
            writer.write(_frame("40" + json.dumps({"token": make_token(f"u-ghost-{n}")})))
            writer.close()  # right behind the connect, before any answer
            await _eventually(_async(lambda: not realtime.manager.pending_connect), timeout=10)
        await _eventually(_async(lambda: not realtime.states and not realtime.sockets_of_ip), timeout=10)
        assert realtime.presence.sockets == {} and realtime.sockets_of_user == {}
        # and a client that stays is admitted and counted as before
        reader, writer = await node.opened()
        writer.write(_frame("40" + json.dumps({"token": make_token("u-stays")})))
        assert (await _text(reader)).startswith("40{")
        assert list(realtime.sockets_of_user) == ["u-stays"] and sum(realtime.sockets_of_ip.values()) == 1
        writer.close()


def _async(check):  # type: ignore[no-untyped-def]
    async def run() -> bool:
        return bool(check())
    return run
