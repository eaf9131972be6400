"""Socket.IO events on one node (memory mode) with python-socketio's AsyncClient."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import socketio
import tornado.simple_httpclient
from tornado.httpclient import AsyncHTTPClient

from chat_fakes import ChatFakes, SocketClient, connected
from harness import ORIGIN, GatewayProcess, make_token

ENV = {"AUTH_TIMEOUT": "1.5", "TYPING_TIMEOUT": "1", "SOCKET_TOKEN_GRACE": "1", "JWT_LEEWAY": "0",
       "MAX_CONNECTIONS_PER_USER": "3", "SOCKET_RATE_MESSAGE": "40/10"}


@pytest.fixture(scope="module")
def gw(stub_upstreams):
    process = GatewayProcess({**stub_upstreams.env(), **ENV}).start()
    yield process
    process.stop()


@pytest.fixture
def fakes(stubs):
    return ChatFakes(stubs)


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def in_chat(gw, fakes, *names, **kwargs):
    """Fresh users joined to a fresh chat: (chat id, clients...)."""
    users = [uid(n) for n in names]
    chat = uid("chat")
    fakes.add_chat(chat, users)
    clients = [await connected(gw, u, **kwargs) for u in users]
    for client in clients:
        assert (await client.call("chat:join", {"chatId": chat}))["ok"]
    return chat, users, clients


async def refused(gw, **kwargs):
    client = SocketClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(gw, **kwargs)
    return client.connect_error


def code(reply) -> str:
    assert reply["ok"] is False, reply
    return reply["error"]["code"]


@pytest.mark.gen_test(timeout=20)
async def test_handshake_tokens_refused_with_their_code(gw):
    assert (await refused(gw, token="garbage"))["data"]["code"] == "INVALID_TOKEN"
    assert (await refused(gw, token=make_token("x", ttl=-60)))["data"]["code"] == "TOKEN_EXPIRED"
    assert (await refused(gw, token=make_token("x", secret="wrong-secret-" * 4)))["data"]["code"] == "INVALID_TOKEN"
    assert (await refused(gw, auth={"token": 12}))["data"]["code"] == "INVALID_TOKEN"
    # a Bearer header authenticates too
    client = await SocketClient().connect(gw, headers={"Authorization": f"Bearer {make_token('hdr')}"})
    assert (await client.call("chat:leave", {"chatId": "c1"}))["ok"]
    await client.close()


@pytest.mark.gen_test(timeout=20)
async def test_disallowed_origin_refused_on_websocket_and_polling(gw):
    for transports in (["websocket"], ["polling"]):
        client = SocketClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(gw, make_token("o"), headers={"Origin": "http://evil.test"},
                                 transports=transports)
    http = AsyncHTTPClient()
    response = await http.fetch(gw.url("/socket.io/?EIO=4&transport=polling"), raise_error=False,
                                headers={"Origin": "http://evil.test"})
    assert response.code == 403 and json.loads(response.body)["error"]["code"] == "FORBIDDEN"
    response = await http.fetch(gw.url("/socket.io/?EIO=4&transport=polling"), raise_error=False,
                                headers={"Origin": ORIGIN})
    assert response.code == 200 and response.headers["Access-Control-Allow-Origin"] == ORIGIN


@pytest.mark.gen_test(timeout=20)
async def test_unauthenticated_socket_refused_then_auth_timeout(gw):
    client = await connected(gw, None)
    assert code(await client.call("chat:join", {"chatId": "c1"})) == "UNAUTHENTICATED"
    await client.emit("chat:join", {"chatId": "c1"})  # no ack: an error event instead
    error = (await client.next("error"))[0]
    assert error == {"code": "UNAUTHENTICATED", "message": error["message"], "event": "chat:join"}
    await asyncio.wait_for(client.disconnected.wait(), 5)
    assert client.events("error")[-1]["code"] == "AUTH_TIMEOUT"


@pytest.mark.gen_test(timeout=20)
async def test_auth_hello_authenticates_and_refreshes_only_the_same_user(gw):
    client = await connected(gw, None)
    idle = await connected(gw, None)  # never authenticates: its AUTH_TIMEOUT is the marker
    assert code(await client.call("auth:hello", {"token": "bad"})) == "INVALID_TOKEN"
    assert code(await client.call("auth:hello", {})) == "VALIDATION_FAILED"
    user = uid("hello")
    reply = await client.call("auth:hello", {"token": make_token(user)})
    assert reply["ok"] and reply["data"]["userId"] == user and reply["data"]["expiresAt"].endswith("Z")
    assert code(await client.call("auth:hello", {"token": make_token("someone-else")})) == "FORBIDDEN"
    assert (await client.call("auth:hello", {"token": make_token(user, ttl=1200)}))["ok"]
    await asyncio.wait_for(idle.disconnected.wait(), 10)  # past AUTH_TIMEOUT (idle came later)
    assert client.sio.connected
    await client.close()


@pytest.mark.gen_test(timeout=20)
async def test_token_expiry_error_then_disconnect_unless_reauthenticated(gw):
    user = uid("exp")
    doomed = await connected(gw, user, auth={"token": make_token(user, ttl=1)})
    saved = await connected(gw, user, auth={"token": make_token(user, ttl=1)})
    later = await connected(gw, user, auth={"token": make_token(user, ttl=1)})  # the grace marker
    error = (await saved.next("error", timeout=5))[0]
    assert error["code"] == "TOKEN_EXPIRED"
    assert code(await saved.call("chat:leave", {"chatId": "c1"})) == "TOKEN_EXPIRED"
    assert (await saved.call("auth:hello", {"token": make_token(user)}))["ok"]
    await asyncio.wait_for(doomed.disconnected.wait(), 5)
    assert doomed.events("error")[0]["code"] == "TOKEN_EXPIRED"
    await asyncio.wait_for(later.disconnected.wait(), 10)  # past saved's grace too (later came later)
    assert saved.sio.connected and (await saved.call("chat:leave", {"chatId": "c1"}))["ok"]
    await saved.close()


BAD_INPUTS = [
    ("chat:join", None), ("chat:join", "c1"), ("chat:join", {}), ("chat:join", {"chatId": 5.5}),
    ("chat:join", {"chatId": "bad id!"}), ("chat:join", {"chatId": "x" * 65}),
    ("message:send", {"chatId": "CHAT"}), ("message:send", {"chatId": "CHAT", "clientMessageId": "a"}),
    ("message:send", {"chatId": "CHAT", "clientMessageId": "a", "text": 42}),
    ("message:send", {"chatId": "CHAT", "clientMessageId": "a", "text": "x" * 4097}),
    ("message:send", {"chatId": "CHAT", "clientMessageId": ["a"], "text": "hi"}),
    ("message:send", {"chatId": "CHAT", "clientMessageId": "a", "text": "   "}),
    ("message:read", {"chatId": "CHAT", "messageIds": []}),
    ("message:read", {"chatId": "CHAT", "messageIds": "m1"}),
    ("message:read", {"chatId": "CHAT", "messageIds": ["m"] * 101 + [{}]}),
    ("chat:create", {"type": "channel", "memberIds": ["a"]}),
    ("chat:create", {"type": "direct", "memberIds": ["a", "b"]}),
    ("chat:create", {"type": "group", "memberIds": [f"u{i}" for i in range(257)]}),
    ("chat:create", {"type": "group", "memberIds": ["a"], "name": 7}),
    ("reaction:set", {"chatId": "CHAT", "messageId": "m1"}),
    ("reaction:set", {"chatId": "CHAT", "messageId": "m1", "emoji": "x" * 17}),
    ("typing:start", {"chatId": None}),
    ("no:such-event", {}),
]


@pytest.mark.gen_test(timeout=30)
async def test_every_bad_payload_gets_validation_failed(gw, fakes):
    chat, users, (client,) = await in_chat(gw, fakes, "val")
    for event, payload in BAD_INPUTS:
        if isinstance(payload, dict) and payload.get("chatId") == "CHAT":
            payload = {**payload, "chatId": chat}
        reply = await client.call(event, payload)
        assert code(reply) == "VALIDATION_FAILED", (event, payload, reply)
    assert fakes.created() == []  # nothing reached the messages service
    await client.close()


@pytest.mark.gen_test(timeout=20)
async def test_unknown_chat_non_member_and_upstream_failures(gw, fakes):
    chat, users, (client,) = await in_chat(gw, fakes, "nm")
    fakes.add_chat("private-chat", ["someone"])
    assert code(await client.call("chat:join", {"chatId": "no-such-chat"})) == "NOT_FOUND"
    assert code(await client.call("chat:join", {"chatId": "private-chat"})) == "FORBIDDEN"
    send = {"chatId": "private-chat", "clientMessageId": uid("c"), "text": "hi"}
    assert code(await client.call("message:send", send)) == "FORBIDDEN"
    assert code(await client.call("typing:start", {"chatId": "private-chat"})) == "FORBIDDEN"
    send = {"chatId": chat, "clientMessageId": uid("c"), "text": "fail:500 boom"}
    assert code(await client.call("message:send", send)) == "UPSTREAM_ERROR"
    send = {"chatId": chat, "clientMessageId": uid("c"), "text": "fail:422 nope"}
    assert code(await client.call("message:send", send)) == "VALIDATION_FAILED"
    await client.close()


@pytest.mark.gen_test(timeout=20)
async def test_message_new_and_receipts_only_after_ack(gw, fakes):
    chat, (alice, bob, carol), (a, b, c) = await in_chat(gw, fakes, "alice", "bob", "carol")
    b.sio.ack_message_new = False  # bob's device never acknowledges
    a2 = await connected(gw, alice)  # alice's second device
    assert (await a2.call("chat:join", {"chatId": chat}))["ok"]
    reply = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "hi"})
    message = reply["data"]["message"]
    assert message["senderId"] == alice and message["chatId"] == chat
    for client in (b, c, a2):
        assert (await client.next("message:new")) == [{"message": message}]
    receipt = (await a.next("receipt:delivered"))[0]
    assert receipt["userId"] == carol and receipt["messageId"] == message["id"]
    # Marker: a second message. Once carol's receipt for it arrived, a late receipt for the
    # first (bob's, or carol's twice) and an echo to the sender would have arrived before it.
    marker = (await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"),
                                            "text": "marker"}))["data"]["message"]
    receipts = await a.next("receipt:delivered", count=2)
    assert [(r["messageId"], r["userId"]) for r in receipts] == [(message["id"], carol),
                                                                 (marker["id"], carol)]
    await a2.next("message:new", count=2)
    assert a.events("message:new") == []  # not back to the sending socket
    for client in (a, a2, b, c):
        await client.close()


@pytest.mark.gen_test(timeout=20)
async def test_retried_client_message_id_same_message_no_second_fanout(gw, fakes):
    chat, users, (a, b) = await in_chat(gw, fakes, "idem-a", "idem-b")
    send = {"chatId": chat, "clientMessageId": uid("c"), "text": "once"}
    first = await a.call("message:send", send)
    second = await a.call("message:send", send)
    assert first["ok"] and second == first
    await b.next("message:new")
    # Marker: another message after the retry; a second fan-out would reach b before it.
    after = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "after"})
    got = await b.next("message:new", count=2)
    assert [m["message"]["id"] for m in got] == [first["data"]["message"]["id"],
                                                 after["data"]["message"]["id"]]
    assert len(fakes.created()) == 2  # the retry never reached the messages service
    await a.close()
    await b.close()


@pytest.mark.gen_test(timeout=20)
async def test_events_of_one_socket_take_effect_in_order(gw, fakes):
    chat, users, (a, b) = await in_chat(gw, fakes, "ord-a", "ord-b")
    first = {"chatId": chat, "clientMessageId": uid("c"), "text": "slow:400 first"}
    second = {"chatId": chat, "clientMessageId": uid("c"), "text": "second"}
    acks = await asyncio.gather(a.call("message:send", first), a.call("message:send", second))
    assert [r["data"]["message"]["text"] for r in acks] == ["slow:400 first", "second"]
    arrived = await b.next("message:new", count=2)
    assert [m["message"]["text"] for m in arrived] == ["slow:400 first", "second"]
    assert [r.json()["text"] for r in fakes.created()] == ["slow:400 first", "second"]
    await a.close()
    await b.close()


@pytest.mark.gen_test(timeout=20)
async def test_typing_throttled_expires_and_stops_on_disconnect(gw, fakes):
    chat, (alice, _), (a, b) = await in_chat(gw, fakes, "typ-a", "typ-b")
    for _ in range(3):
        assert (await a.call("typing:start", {"chatId": chat}))["ok"]
    first = await b.next("typing:update")
    assert first == [{"chatId": chat, "userId": alice, "typing": True}]  # repeats throttled
    stopped = await b.next("typing:update", count=2, timeout=3)  # TYPING_TIMEOUT=1
    assert stopped[1]["typing"] is False
    assert a.events("typing:update") == []  # not echoed to the sender
    await a.call("typing:start", {"chatId": chat})
    await b.next("typing:update", count=3)
    await a.close()
    updates = await b.next("typing:update", count=4)
    assert updates[3]["typing"] is False
    await b.close()


@pytest.mark.gen_test(timeout=20)
async def test_presence_multi_device_and_http_answer(gw, fakes):
    chat, (alice, bob), (a1, b) = await in_chat(gw, fakes, "pres-a", "pres-b")
    a2 = await connected(gw, alice)
    http = AsyncHTTPClient()

    async def presence(query, token=make_token("asker")):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await http.fetch(gw.url(f"/api/presence?{query}"), headers=headers, raise_error=False)
        return response.code, json.loads(response.body)

    status, body = await presence(f"userIds={alice},nobody-here")
    assert status == 200
    assert body["presence"] == [{"userId": alice, "status": "online"},
                                {"userId": "nobody-here", "status": "offline"}]
    assert (await presence(f"userIds={alice}", token=None))[0] == 401
    assert (await presence("userIds=bad%20id"))[0] == 400
    assert (await presence("userIds=" + ",".join(f"u{i}" for i in range(101))))[0] == 400
    assert (await a1.call("typing:start", {"chatId": chat}))["ok"]
    await b.next("typing:update")
    await a1.close()
    # Marker: closing a1 stops its typing (typing:update false) right before the presence
    # decision, and b's own round trip after that follows any offline announcement.
    assert (await b.next("typing:update", count=2))[-1]["typing"] is False
    assert (await b.call("chat:join", {"chatId": chat}))["ok"]
    assert not [p for p in b.events("presence:update") if p["status"] == "offline"]
    await a2.close()
    offline = [p for p in await b.next("presence:update", count=1) if p["status"] == "offline"]
    for _ in range(20):
        offline = [p for p in b.events("presence:update") if p["status"] == "offline"]
        if offline:
            break
        await asyncio.sleep(0.1)
    assert offline[0]["userId"] == alice and offline[0]["lastSeen"].endswith("Z")
    status, body = await presence(f"userIds={alice}")
    assert body["presence"][0]["status"] == "offline" and "lastSeen" in body["presence"][0]
    await b.close()


@pytest.mark.gen_test(timeout=20)
async def test_chat_create_read_and_reaction(gw, fakes):
    alice, bob = uid("cr-a"), uid("cr-b")
    a, b = await connected(gw, alice), await connected(gw, bob)
    reply = await a.call("chat:create", {"type": "group", "memberIds": [bob], "name": "Team"})
    chat = reply["data"]["chat"]
    assert reply["ok"] and chat["name"] == "Team"
    assert (await b.next("chat:updated"))[0] == {"chat": chat}
    assert (await a.next("chat:updated"))[0] == {"chat": chat}
    await b.call("chat:join", {"chatId": chat["id"]})
    await a.call("chat:join", {"chatId": chat["id"]})
    sent = await a.call("message:send", {"chatId": chat["id"], "clientMessageId": uid("c"), "text": "x"})
    message_id = sent["data"]["message"]["id"]
    assert (await b.call("message:read", {"chatId": chat["id"], "messageIds": [message_id]})) == \
        {"ok": True, "data": {}}
    read = (await a.next("receipt:read"))[0]
    assert read["userId"] == bob and read["messageIds"] == [message_id] and read["chatId"] == chat["id"]
    reply = await b.call("reaction:set", {"chatId": chat["id"], "messageId": message_id, "emoji": "👍"})
    assert reply["data"]["message"]["reactions"] == {bob: "👍"}
    assert (await a.next("message:edit"))[0]["message"]["reactions"] == {bob: "👍"}
    reply = await b.call("reaction:set", {"chatId": chat["id"], "messageId": message_id, "emoji": None})
    assert reply["data"]["message"]["reactions"] == {}
    assert code(await b.call("reaction:set", {"chatId": chat["id"], "messageId": "m-none", "emoji": "x"})) \
        == "NOT_FOUND"
    await a.close()
    await b.close()


@pytest.mark.gen_test(timeout=20)
async def test_rate_limit_and_connection_cap(gw, fakes):
    chat, (user,), (a,) = await in_chat(gw, fakes, "rl")
    codes = []
    for i in range(60):
        reply = await a.call("message:read", {"chatId": chat, "messageIds": ["m1"]})
        codes.append("ok" if reply["ok"] else reply["error"]["code"])
    assert codes[:40] == ["ok"] * 40 and "RATE_LIMITED" in codes  # 40 at once, then ~4/s
    others = [await connected(gw, user) for _ in range(2)]  # MAX_CONNECTIONS_PER_USER=3
    assert (await refused(gw, token=make_token(user)))["data"]["code"] == "TOO_MANY_CONNECTIONS"
    for client in (a, *others):
        await client.close()


@pytest.mark.gen_test(timeout=20)
async def test_client_ip_follows_trusted_proxy_rules(start_gateway):
    gw = start_gateway({"TRUSTED_PROXIES": "127.0.0.1", "MAX_CONNECTIONS_PER_IP": "1"})
    first = await SocketClient().connect(gw, make_token("ip1"), headers={"X-Forwarded-For": "10.0.0.1"})
    # another real client behind the same proxy is not the same address
    second = await SocketClient().connect(gw, make_token("ip2"), headers={"X-Forwarded-For": "10.0.0.2"})
    error = await refused(gw, token=make_token("ip3"), headers={"X-Forwarded-For": "10.0.0.1"})
    assert error["data"]["code"] == "TOO_MANY_CONNECTIONS"
    await first.close()
    await second.close()


@pytest.mark.gen_test(timeout=20)
async def test_oversized_polling_post_refused_before_its_body_is_read(gw):
    http = AsyncHTTPClient()
    opened = await http.fetch(gw.url("/socket.io/?EIO=4&transport=polling"), headers={"Origin": ORIGIN})
    sid = json.loads(opened.body.decode()[1:])["sid"]
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    # 5 MiB announced, only 64 KiB sent: the answer must come without the rest of the body
    writer.write(f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
                 f"Host: 127.0.0.1\r\nOrigin: {ORIGIN}\r\nContent-Type: text/plain\r\n"
                 f"Content-Length: {5 * 1024 * 1024}\r\n\r\n".encode() + b"4" * 65536)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"PAYLOAD_TOO_LARGE" in await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    # a chunked body over the limit is cut off too, and the node stays healthy
    try:
        response = await http.fetch(gw.url(f"/socket.io/?EIO=4&transport=polling&sid={sid}"), method="POST",
                                    body_producer=_chunks(b"4" * 65536, 80), raise_error=False,
                                    headers={"Origin": ORIGIN, "Content-Type": "text/plain"})
        assert response.code == 400
    except (OSError, tornado.simple_httpclient.HTTPStreamClosedError):
        pass  # refused and closed while the client was still sending
    assert (await http.fetch(gw.url("/healthz"))).code == 200
    client = await connected(gw, uid("after-post"))
    assert (await client.call("chat:leave", {"chatId": "c1"}))["ok"]
    await client.close()


def _chunks(chunk: bytes, count: int):
    async def produce(write):
        for _ in range(count):
            await write(chunk)
    return produce
