"""Socket.IO across gateway nodes sharing one real redis-server: fan-out, receipts, presence, failures."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import pytest
from tornado.httpclient import AsyncHTTPClient

from chat_fakes import ChatFakes, connected
from harness import make_token
from robust_support import eventually

ENV = {"PRESENCE_TTL": "3", "TYPING_TIMEOUT": "1"}


@pytest.fixture
def fakes(stubs):
    return ChatFakes(stubs)


@pytest.fixture
def two_nodes(start_gateway, redis_server):
    env = {**ENV, "REDIS_URL": redis_server.url, "LOG_LEVEL": "debug"}  # presence's debug line
    return start_gateway(env), start_gateway(env)


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def join(client, chat):
    assert (await client.call("chat:join", {"chatId": chat}))["ok"]


async def alice_and_bob(fakes, alice_on, bob_on):
    """A fresh chat of alice and bob, bob joined first: (chat, (alice, client), (bob, client))."""
    alice, bob = uid("alice"), uid("bob")
    chat = uid("chat")
    fakes.add_chat(chat, [alice, bob])
    b = await connected(bob_on, bob)
    await join(b, chat)
    a = await connected(alice_on, alice)
    await join(a, chat)
    return chat, (alice, a), (bob, b)


async def presence_of(gw, user):
    response = await AsyncHTTPClient().fetch(gw.url(f"/api/presence?userIds={user}"), raise_error=False,
                                             headers={"Authorization": f"Bearer {make_token('asker')}"})
    return json.loads(response.body)["presence"][0]["status"]


@pytest.mark.gen_test(timeout=30)
async def test_message_crosses_nodes_exactly_once_with_receipt_and_presence(two_nodes, fakes):
    node1, node2 = two_nodes
    chat, (alice, a), (bob, b) = await alice_and_bob(fakes, alice_on=node1, bob_on=node2)
    assert await presence_of(node2, alice) == "online"  # node 2 sees node 1's user
    reply = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "hop"})
    message = reply["data"]["message"]
    assert (await b.next("message:new")) == [{"message": message}]
    receipt = (await a.next("receipt:delivered"))[0]  # acked on node 2, receipt to node 1
    assert receipt["userId"] == bob and receipt["messageId"] == message["id"]
    # the same clientMessageId retried on the other node: same message, no second message:new
    a2 = await connected(node2, alice)
    again = await a2.call("message:send", {"chatId": chat, "clientMessageId": reply["data"]["message"]
                                           ["clientMessageId"], "text": "hop"})
    assert again["data"]["message"] == message
    # Marker: a new message from the same node; a second fan-out of the retried one (and its
    # receipt) would have reached bob (and alice) before the marker's.
    marker = (await a2.call("message:send", {"chatId": chat, "clientMessageId": uid("c"),
                                             "text": "marker"}))["data"]["message"]
    got = await b.next("message:new", count=2)
    assert [m["message"]["id"] for m in got] == [message["id"], marker["id"]]
    receipts = await a.next("receipt:delivered", count=2)
    assert [r["messageId"] for r in receipts] == [message["id"], marker["id"]]
    # multi-device across nodes: offline only when the last socket (on any node) closes
    carol = uid("carol")
    fakes.add_chat(chat, [alice, bob, carol])
    c = await connected(node1, carol)
    await join(c, chat)
    await a.close()
    # Marker: node 1 has decided alice is still online elsewhere (its debug line); what it
    # fans out to the chat after that reaches bob after any presence:update it sent before.
    still = f"presence: {alice} still online elsewhere"

    async def decided():
        return still in node1.logs()
    assert await eventually(decided), "node 1 never released alice's closed socket"
    text = uid("marker")
    assert (await c.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": text}))["ok"]

    async def marker_arrived():
        return [m for m in b.events("message:new") if m["message"]["text"] == text]
    assert await eventually(marker_arrived)
    assert await presence_of(node1, alice) == "online"
    assert not [p for p in b.events("presence:update") if p["status"] == "offline"]
    await c.close()
    await a2.close()
    offline = await eventually(lambda: _offline(b, alice))
    assert offline and await presence_of(node1, alice) == "offline"
    await b.close()


async def _offline(client, user):
    return [p for p in client.events("presence:update") if p == {**p, "userId": user, "status": "offline"}]


@pytest.mark.gen_test(timeout=40)
async def test_redis_restart_local_delivery_meanwhile_cross_node_resumes(start_gateway, own_redis, fakes):
    env = {**ENV, "REDIS_URL": own_redis.url}
    node1, node2 = start_gateway(env), start_gateway(env)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    chat = uid("chat")
    fakes.add_chat(chat, [alice, bob, carol])
    a, b, c = await connected(node1, alice), await connected(node1, bob), await connected(node2, carol)
    for client in (a, b, c):
        await join(client, chat)
    own_redis.kill()
    await asyncio.sleep(1.5)
    reply = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "local"})
    assert reply["ok"], reply
    await b.next("message:new")  # same node: delivered while Redis is down
    status, _ = node1.get_json("/readyz")
    assert status == 503
    own_redis.start()

    async def crossed():
        send = {"chatId": chat, "clientMessageId": uid("c"), "text": "after"}
        await a.call("message:send", send)
        await asyncio.sleep(0.3)
        return [m for m in c.events("message:new") if m["message"]["text"] == "after"]

    assert await eventually(crossed, timeout=15, step=0.2), "cross-node delivery did not resume"
    assert (await eventually(lambda: _ready(node1), timeout=5))
    for client in (a, b, c):
        await client.close()


async def _ready(gw):
    return gw.get_json("/readyz")[0] == 200


@pytest.mark.gen_test(timeout=30)
async def test_sigkilled_node_users_go_offline_within_presence_ttl(two_nodes, fakes):
    node1, node2 = two_nodes
    chat, (alice, a), (bob, b) = await alice_and_bob(fakes, alice_on=node2, bob_on=node1)
    assert await presence_of(node1, alice) == "online"
    node2.kill()  # SIGKILL: no clean-up at all
    # PRESENCE_TTL=3: claims last 1.5 s, sweeps every 0.6 s (+1 s slack for a busy test machine)
    offline = await eventually(lambda: _offline(b, alice), timeout=3 + 1)
    assert offline, "no offline presence:update within PRESENCE_TTL for the dead node's user"
    assert await presence_of(node1, alice) == "offline"
    await b.close()


@pytest.mark.gen_test(timeout=30)
async def test_sigterm_drain_closes_sockets_and_removes_presence(two_nodes, fakes):
    node1, node2 = two_nodes
    chat, (alice, a), (bob, b) = await alice_and_bob(fakes, alice_on=node2, bob_on=node1)
    node2.signal(signal.SIGTERM)
    await asyncio.wait_for(a.disconnected.wait(), 10)
    assert a.events("error")[-1]["code"] == "DRAINING"
    assert await eventually(lambda: _offline(b, alice))
    assert await presence_of(node1, alice) == "offline"
    assert node2.wait(15) == 0
    await b.close()


@pytest.mark.gen_test(timeout=60)
async def test_burst_of_simultaneous_connects_all_succeed_and_node_stays_ready(start_gateway, own_redis):
    # own_redis: the session's Redis holds earlier tests' connect buckets for 127.0.0.1 (at 60/60)
    gw = start_gateway({**ENV, "REDIS_URL": own_redis.url, "SOCKET_RATE_CONNECT": "1000/1",
                        "MAX_CONNECTIONS_PER_IP": "0"})
    http = AsyncHTTPClient()
    readiness = []
    done = asyncio.Event()

    async def watch_readiness():
        while not done.is_set():
            readiness.append((await http.fetch(gw.url("/readyz"), raise_error=False)).code)
            await asyncio.sleep(0.02)

    watcher = asyncio.ensure_future(watch_readiness())
    results = await asyncio.gather(*(connected(gw, uid(f"burst{i}")) for i in range(120)),
                                   return_exceptions=True)
    clients = [c for c in results if not isinstance(c, BaseException)]
    replies = await asyncio.gather(*(c.call("chat:leave", {"chatId": "c1"}) for c in clients))
    done.set()
    await watcher
    assert len(clients) == 120, [r for r in results if isinstance(r, BaseException)][:3]
    assert all(reply["ok"] for reply in replies)
    assert readiness and set(readiness) == {200}
    assert "redis lost" not in gw.logs() and "Too many connections" not in gw.logs()
    await asyncio.gather(*(c.close() for c in clients))
