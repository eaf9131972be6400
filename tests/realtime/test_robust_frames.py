"""Frames that are not Engine.IO / Socket.IO at all (issue 7): no traceback, no dangling socket.

A frame with nothing to answer (no event name, no ack id) is a protocol error of that
client: the gateway logs one warning line and closes that transport at once, as the
reference server does ("parse error"), so the user's presence turns offline at once
instead of after a ping timeout; a well-formed event on the same node is unaffected.
"""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from internal_client import running_nodes
from robust_support import ChatFakes, connected, join, make_token, presence_of, uid, eventually
from harness import ORIGIN


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams)


async def raw_socket(node, user: str):
    """A websocket speaking Engine.IO/Socket.IO by hand, connected and authenticated."""
    url = node.base.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ws = await websocket_connect(HTTPRequest(url, headers={"Origin": ORIGIN}))
    opened = await ws.read_message()
    assert opened.startswith("0{"), opened
    await ws.write_message("40" + json.dumps({"token": make_token(user)}))
    while True:
        message = await ws.read_message()
        assert message is not None, "closed before the Socket.IO connect was answered"
        if message.startswith("40"):
            return ws


async def next_message(ws, prefix: str):
    """The next message starting with ``prefix`` (pings and pushed events are skipped)."""
    while True:
        message = await ws.read_message()
        if message is None or message.startswith(prefix):
            return message


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("frame", ["\x00\x01", "9", "", "4Xgarbage"],
                         ids=["control-bytes", "unknown-engineio-type", "empty", "unknown-socketio-type"])
async def test_a_frame_that_is_no_packet_closes_that_transport_cleanly(nodes, stubs, frame):
    node1, node2 = nodes
    fakes = ChatFakes(stubs)
    mallory, bob, chat = uid("mallory"), uid("bob"), uid("chat")
    fakes.add_chat(chat, [mallory, bob])
    b = await connected(node2, bob)
    await join(b, chat)
    ws = await raw_socket(node1, mallory)
    await ws.write_message('420["chat:join",{"chatId":"%s"}]' % chat)
    assert json.loads((await next_message(ws, "430"))[3:])[0]["ok"] is True
    assert await presence_of(node2, mallory) == "online"

    before = len(node1.log_records())
    await ws.write_message(frame)
    # The transport is closed by the gateway (read_message gives None), not left for the
    # ping timeout, and the user is offline on the other node at once.
    assert await next_message(ws, "\x00never") is None
    offline = {"userId": mallory, "status": "offline"}

    async def told_offline():
        return any(offline.items() <= update.items() for update in b.events("presence:update"))
    assert await eventually(told_offline, timeout=8), b.received
    assert await presence_of(node2, mallory) == "offline"

    # One warning line, no traceback, nothing at error level; the node serves on.
    records = node1.log_records()[before:]
    protocol = [r for r in records if "malformed" in str(r.get("message", ""))]
    assert len(protocol) == 1 and protocol[0]["level"] == "warning", (protocol, records)
    assert not [r for r in records if r.get("level") == "error" or "unparsed" in r
                or "Traceback" in json.dumps(r)], records[-5:]
    a = await connected(node1, uid("alice"))
    assert (await a.call("chat:leave", {"chatId": chat}))["ok"] is True
    await a.close()
    await b.close()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("frames,answer", [
    (["4"], '42["error"'), (["42"], '42["error"'), (["421"], "431["),
    (['451-7["x",{"_placeholder":true,"num":0}]', b"\x01\x02"], "437["),
], ids=["empty-socketio", "event-without-data", "event-without-data-with-ack", "binary-event"])
async def test_an_event_without_a_name_is_answered_on_an_open_socket(nodes, stubs, frames, answer):
    """A packet that decodes as an event but names none (or carries binary, which no event
    takes) is answered VALIDATION_FAILED (ack, or ``error`` without one); the socket stays."""
    node1, _ = nodes
    fakes = ChatFakes(stubs)
    mallory, chat = uid("mallory"), uid("chat")
    fakes.add_chat(chat, [mallory])
    ws = await raw_socket(node1, mallory)
    before = len(node1.log_records())
    for frame in frames:
        await ws.write_message(frame, binary=isinstance(frame, bytes))
    reply = await next_message(ws, answer)
    assert reply is not None, "the socket was closed"
    body = json.loads(reply[reply.index("["):])
    error = body[1] if answer.startswith("42") else body[0]["error"]
    assert error["code"] == "VALIDATION_FAILED", body
    await ws.write_message('422["chat:join",{"chatId":"%s"}]' % chat)
    assert json.loads((await next_message(ws, "432"))[3:])[0]["ok"] is True
    records = node1.log_records()[before:]
    assert not [r for r in records if r.get("level") == "error" or "unparsed" in r], records[-5:]
    ws.close()
