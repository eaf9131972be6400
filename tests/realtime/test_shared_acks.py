"""message:new is framed once per node with one ack id for all its recipients (wire.FastDelivery):
every transport still gets it, each socket's ids ascend, and an ack makes a delivered receipt
exactly once however it is forged, repeated or late. Two nodes on one Redis; real sockets."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from harness import ORIGIN
from internal_client import running_nodes
from robust_support import ChatFakes, connected, join, make_token, uid

ACK_WINDOW = 256  # wire.ACK_WINDOW: unanswered message:new acks a socket keeps


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams, env={"SOCKET_RATE_MESSAGE": "100000/1"})


class RawSocket:
    """A websocket speaking Engine.IO/Socket.IO by hand: it sees ack ids and acks as it likes."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self._ack_ids = 0

    @classmethod
    async def open(cls, node, user: str) -> "RawSocket":
        url = node.base.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        ws = await websocket_connect(HTTPRequest(url, headers={"Origin": ORIGIN}))
        assert (await ws.read_message()).startswith("0{")
        await ws.write_message("40" + json.dumps({"token": make_token(user)}))
        socket = cls(ws)
        assert (await socket.next("40")).startswith("40")
        return socket

    async def next(self, prefix: str) -> str:
        """The next message starting with ``prefix``; PINGs are answered, others skipped."""
        while True:
            message = await self.ws.read_message()
            assert message is not None, "socket closed"
            if message == "2":
                await self.ws.write_message("3")
            elif message.startswith(prefix):
                return message

    async def call(self, event: str, data: dict) -> dict:
        self._ack_ids += 1
        await self.ws.write_message("42%d%s" % (self._ack_ids, json.dumps([event, data])))
        reply = await self.next("43%d[" % self._ack_ids)
        return json.loads(reply[len("43%d" % self._ack_ids):])[0]

    async def message_new(self) -> tuple[int, dict]:
        """The next message:new: (its ack id, its data)."""
        text = await self.next("42")
        end = 2
        while text[end].isdigit():
            end += 1
        event, data = json.loads(text[end:])
        assert event == "message:new" and end > 2, text  # an ack id is always asked for
        return int(text[2:end]), data

    async def ack(self, ack_id: int) -> None:
        await self.ws.write_message("43%d[]" % ack_id)


async def send(client, chat: str, text: str) -> dict:
    reply = await client.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": text})
    assert reply["ok"], reply
    return reply["data"]["message"]


async def close_polling(client) -> None:
    """Close a polling client without waiting for its long poll to time out (a ping interval)."""
    eio = client.sio.eio
    tasks = [t for t in (eio.read_loop_task, eio.write_loop_task) if t is not None]
    await eio.disconnect(abort=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def receipts_of(client) -> list[tuple[str, str]]:
    return [(r["messageId"], r["userId"]) for r in client.events("receipt:delivered")]


@pytest.mark.gen_test(timeout=60)
async def test_one_message_reaches_every_transport_and_each_recipient_receipts_once(nodes, stubs):
    node1, node2 = nodes
    fakes = ChatFakes(stubs)
    alice, bob, carol, chat, other_chat = uid("alice"), uid("bob"), uid("carol"), uid("chat"), uid("chat")
    fakes.add_chat(chat, [alice, bob, carol])
    fakes.add_chat(other_chat, [alice, carol])
    a = await connected(node1, alice)
    c_polling = await connected(node1, carol, transports=("polling",))  # acks by itself
    c_ws = await connected(node2, carol)  # carol's second device acks too: still one receipt
    bob_same_node = await RawSocket.open(node1, bob)
    bob_other_node = await RawSocket.open(node2, bob)
    for client in (a, c_polling, c_ws):
        await join(client, chat)
    await join(a, other_chat)
    await join(c_polling, other_chat)
    for raw in (bob_same_node, bob_other_node):
        assert (await raw.call("chat:join", {"chatId": chat}))["ok"]

    message = await send(a, chat, "hello")
    id1, data1 = await bob_same_node.message_new()
    id2, data2 = await bob_other_node.message_new()
    assert data1 == data2 == {"message": message}
    for client in (c_polling, c_ws):
        assert await client.next("message:new") == [{"message": message}]

    # Bob's forgeries first: an id no socket of his was given, the id of a message of a
    # chat he is not in (carol's socket on node1 was given it), then his real ack twice
    # from one device and once from the other: one receipt for bob.
    elsewhere = await send(a, other_chat, "not for bob")
    await c_polling.next("message:new", count=2)
    await bob_same_node.ack(id1 + 10_000)
    await bob_same_node.ack(0)
    for later in range(id1 + 1, id1 + 40):  # whatever ids the node drew for other_chat's message
        await bob_same_node.ack(later)
    await bob_same_node.ack(id1)
    await bob_same_node.ack(id1)
    await bob_other_node.ack(id2)

    # Marker: a third message that both of bob's devices ack; once its receipts are in,
    # anything the forgeries or repeats would have caused has arrived before them.
    marker = await send(a, chat, "marker")
    for raw, earlier in ((bob_same_node, id1), (bob_other_node, id2)):
        marker_id, data = await raw.message_new()
        assert data == {"message": marker} and marker_id > earlier  # ids ascend per socket
        await raw.ack(marker_id)
    await c_polling.next("message:new", count=3)
    await a.next("receipt:delivered", count=5)
    assert sorted(receipts_of(a)) == sorted([
        (message["id"], carol), (message["id"], bob), (elsewhere["id"], carol),
        (marker["id"], carol), (marker["id"], bob)])
    for client in (a, c_ws):
        await client.close()
    await close_polling(c_polling)
    for raw in (bob_same_node, bob_other_node):
        raw.ws.close()


@pytest.mark.gen_test(timeout=120)
async def test_an_ack_beyond_the_window_is_forgotten_and_a_recent_one_still_counts(nodes, stubs):
    node1, _ = nodes
    fakes = ChatFakes(stubs)
    alice, bob, chat = uid("alice"), uid("bob"), uid("chat")
    fakes.add_chat(chat, [alice, bob])
    a = await connected(node1, alice)
    await join(a, chat)
    b = await RawSocket.open(node1, bob)
    assert (await b.call("chat:join", {"chatId": chat}))["ok"]
    sent = [await send(a, chat, f"m{i}") for i in range(ACK_WINDOW + 2)]
    ids = [(await b.message_new())[0] for _ in sent]
    assert ids == sorted(set(ids))  # unique and ascending on this socket
    await b.ack(ids[0])  # fell out of the window two messages ago: nothing happens
    await b.ack(ids[1])
    await b.ack(ids[-1])  # still pending: a receipt
    marker = await send(a, chat, "marker")
    marker_id, _ = await b.message_new()
    await b.ack(marker_id)
    await a.next("receipt:delivered", count=2)
    assert receipts_of(a) == [(sent[-1]["id"], bob), (marker["id"], bob)]
    await a.close()
    b.ws.close()
