"""Room-scoped delivery across real gateway nodes: on one Redis, through Sentinel, on a Redis Cluster.

A node hears only the rooms it holds sockets in (read from its own
``gateway_cluster_messages_in_total``), events sent right after a join ack or
a connect are not lost, revocations and presence still reach every node, a
socket that leaves and re-enters gets each event once, and on a 3-master
Redis Cluster messages, user events, presence and rate limits work across
nodes and survive a shard restart. Sentinel mode keeps working.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from tornado.httpclient import AsyncHTTPClient

from chat_fakes import ChatFakes, connected
from harness import make_token
from internal_client import AUTH_ENV, fetch, metric_value, post_event
from redis_sentinel import RedisSentinel

ENV = {"PRESENCE_TTL": "3", "TYPING_TIMEOUT": "1", **AUTH_ENV}


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def fakes(stubs):
    return ChatFakes(stubs)


@pytest.fixture
def three_nodes(start_gateway, redis_server):
    env = {**ENV, "REDIS_URL": redis_server.url}
    return start_gateway(env), start_gateway(env), start_gateway(env)


@pytest.fixture
def cluster_nodes(start_gateway, redis_cluster):
    env = {**ENV, "REDIS_URL": redis_cluster.url, "SOCKET_RATE_MESSAGE": "3/60"}
    return start_gateway(env), start_gateway(env)


async def messages_in(node) -> float:
    """Every pub/sub message the node received so far (all channels)."""
    response = await fetch(node, "/metrics")
    assert response.code == 200
    return sum(float(line.rpartition(" ")[2]) for line in response.body.decode().splitlines()
               if line.startswith("gateway_cluster_messages_in_total{"))


async def presence_of(gw, user):
    response = await AsyncHTTPClient().fetch(gw.url(f"/api/presence?userIds={user}"), raise_error=False,
                                             headers={"Authorization": f"Bearer {make_token('asker')}"})
    return json.loads(response.body)["presence"][0]["status"]


async def send(client, chat, text):
    reply = await client.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": text})
    assert reply["ok"], reply
    return reply["data"]["message"]


def texts(client) -> list:
    return [data["message"]["text"] for data in client.events("message:new")]


@pytest.mark.gen_test(timeout=60)
async def test_a_node_without_members_of_a_chat_receives_none_of_its_traffic(three_nodes, fakes):
    node1, node2, node3 = three_nodes
    alice, bob, carol, dave = uid("alice"), uid("bob"), uid("carol"), uid("dave")
    busy, quiet = uid("busy"), uid("quiet")
    fakes.add_chat(busy, [alice, bob])  # members on node 1 and node 2
    fakes.add_chat(quiet, [dave, carol])  # members on node 1 and node 3
    a, b = await connected(node1, alice), await connected(node2, bob)
    c, d = await connected(node3, carol), await connected(node1, dave)
    for client, chat in ((a, busy), (b, busy), (c, quiet), (d, quiet)):
        assert (await client.call("chat:join", {"chatId": chat}))["ok"]
    before3, before2 = await messages_in(node3), await messages_in(node2)
    for i in range(10):
        await send(a, busy, f"busy-{i}")
    await b.next("message:new", count=10)
    await send(d, quiet, "marker")  # the one chat event node 3 must hear
    assert texts(await _wait(c, "message:new")) == ["marker"]
    assert await messages_in(node3) - before3 == 1  # the marker, nothing of the busy chat
    assert await messages_in(node2) - before2 >= 1  # node 2 did hear the busy chat
    for client in (a, b, c, d):
        await client.close()


async def _wait(client, event):
    await client.next(event)
    return client


@pytest.mark.gen_test(timeout=60)
async def test_events_right_after_a_join_ack_or_a_connect_are_delivered(start_gateway, own_redis, fakes):
    env = {**ENV, "REDIS_URL": own_redis.url}
    node1, node2 = start_gateway(env), start_gateway(env)
    redis = own_redis.client()
    for i in range(3):
        bob, carol = uid("bob"), uid("carol")
        chat = uid("fresh")
        fakes.add_chat(chat, [bob])
        b = await connected(node2, bob)
        # Every subscriber connection is cut: node 2 listens again only after its reconnect
        # (>= 0.1 s), so an ack sent before its subscription is live would lose the event.
        redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert (await b.call("chat:join", {"chatId": chat}))["ok"]
        response = await post_event(node1, {"event": "message:edit", "to": {"chat": chat},
                                             "data": {"marker": i}})
        assert response.code == 202
        assert (await b.next("message:edit"))[0] == {"marker": i}
        # a user's first socket: an event to the user right after connect reaches it
        redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        c = await connected(node2, carol)
        response = await post_event(node1, {"event": "chat:updated", "to": {"user": carol},
                                             "data": {"marker": i}})
        assert response.code == 202
        assert (await c.next("chat:updated"))[0] == {"marker": i}
        await b.close()
        await c.close()


@pytest.mark.gen_test(timeout=60)
async def test_revocations_and_presence_reach_every_node(three_nodes, fakes):
    node1, node2, node3 = three_nodes
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    chat = uid("chat")
    fakes.add_chat(chat, [alice, bob, carol])
    a = await connected(node1, alice)
    assert (await a.call("chat:join", {"chatId": chat}))["ok"]
    c = await connected(node3, carol)
    assert (await c.call("chat:join", {"chatId": chat}))["ok"]
    online = await a.next("presence:update")
    assert {"userId": carol, "status": "online"} in online
    await c.close()  # carol's last socket, on node 3: node 1 hears she is offline
    deadline = time.monotonic() + 10
    while not any(p.get("userId") == carol and p.get("status") == "offline" for p in a.events("presence:update")):
        assert time.monotonic() < deadline, a.received
        await asyncio.sleep(0.05)
    assert await presence_of(node2, carol) == "offline"
    # a revocation sent to node 1 closes bob's sockets on nodes 2 and 3 (no room of his there matters)
    b2, b3 = await connected(node2, bob), await connected(node3, bob)
    assert await presence_of(node1, bob) == "online"
    response = await post_event(node1, {"type": "session:revoke", "userId": bob})
    assert response.code == 202
    await asyncio.wait_for(asyncio.gather(b2.disconnected.wait(), b3.disconnected.wait()), 5)
    assert any(e.get("code") == "TOKEN_REVOKED" for e in b2.events("error"))
    await a.close()


@pytest.mark.gen_test(timeout=60)
async def test_leaving_and_re_entering_a_room_gets_each_event_once(three_nodes, fakes):
    node1, node2, _ = three_nodes
    alice, bob = uid("alice"), uid("bob")
    chat = uid("chat")
    fakes.add_chat(chat, [alice, bob])
    a, b = await connected(node1, alice), await connected(node2, bob)
    for client in (a, b):
        assert (await client.call("chat:join", {"chatId": chat}))["ok"]
    await send(a, chat, "in-1")
    await b.next("message:new", count=1)
    chats_before = await metric_value(node2, "gateway_room_subscriptions", kind="chat")
    assert chats_before >= 1
    assert (await b.call("chat:leave", {"chatId": chat}))["ok"]  # node 2's last member: unsubscribes
    deadline = time.monotonic() + 5
    while await metric_value(node2, "gateway_room_subscriptions", kind="chat") != chats_before - 1:
        assert time.monotonic() < deadline, "the chat's subscription was not dropped"
        await asyncio.sleep(0.05)
    await send(a, chat, "while-out")
    # leave and re-enter back to back, then again with the join acked
    await b.emit("chat:leave", {"chatId": chat})
    assert (await b.call("chat:join", {"chatId": chat}))["ok"]
    await b.emit("chat:leave", {"chatId": chat})
    assert (await b.call("chat:join", {"chatId": chat}))["ok"]
    assert await metric_value(node2, "gateway_room_subscriptions", kind="chat") == chats_before
    await send(a, chat, "in-2")
    await send(a, chat, "marker")
    await b.next("message:new", count=3)
    assert texts(b) == ["in-1", "in-2", "marker"]
    for client in (a, b):
        await client.close()


@pytest.mark.gen_test(timeout=60)
async def test_two_nodes_through_redis_sentinel(start_gateway, fakes):
    sentinel = RedisSentinel().start()
    try:
        env = {**ENV, "REDIS_URL": sentinel.url}
        node1, node2 = start_gateway(env), start_gateway(env)
        alice, bob = uid("alice"), uid("bob")
        chat = uid("chat")
        fakes.add_chat(chat, [alice, bob])
        a, b = await connected(node1, alice), await connected(node2, bob)
        for client in (a, b):
            assert (await client.call("chat:join", {"chatId": chat}))["ok"]
        message = await send(a, chat, "through sentinel")
        assert (await b.next("message:new"))[0] == {"message": message}
        assert (await post_event(node2, {"event": "chat:updated", "to": {"user": alice},
                                         "data": {"marker": "s"}})).code == 202
        assert (await a.next("chat:updated"))[0] == {"marker": "s"}
        for client in (a, b):
            await client.close()
    finally:
        sentinel.stop()


@pytest.mark.gen_test(timeout=90)
async def test_two_nodes_on_a_redis_cluster(cluster_nodes, fakes):
    """Messages, user events, presence, idempotency, shared rate limits and revocation across nodes."""
    node1, node2 = cluster_nodes
    alice, bob = uid("alice"), uid("bob")
    chat = uid("chat")
    fakes.add_chat(chat, [alice, bob])
    b = await connected(node2, bob)
    assert (await b.call("chat:join", {"chatId": chat}))["ok"]
    a = await connected(node1, alice)
    assert (await a.call("chat:join", {"chatId": chat}))["ok"]
    assert {"userId": alice, "status": "online"} in await b.next("presence:update")
    assert await presence_of(node2, alice) == "online"
    message = await send(a, chat, "over the cluster")
    assert (await b.next("message:new"))[0] == {"message": message}
    receipt = (await a.next("receipt:delivered"))[0]  # a user event, from node 2 to node 1
    assert receipt["userId"] == bob and receipt["messageId"] == message["id"]
    # idempotency across nodes: bob's retry on node 1 gets the same message, alice gets it once
    b1 = await connected(node1, bob)
    key = uid("c")
    first = await b.call("message:send", {"chatId": chat, "clientMessageId": key, "text": "once"})
    again = await b1.call("message:send", {"chatId": chat, "clientMessageId": key, "text": "once"})
    assert again["data"]["message"] == first["data"]["message"]
    await send(b, chat, "marker")
    await a.next("message:new", count=2)
    assert texts(a) == ["once", "marker"]
    # alice's limit (3 per minute) is shared by both nodes: one sent on node 1, one on node 2,
    # one more on node 1, and the fourth (on node 2) is refused
    a2 = await connected(node2, alice)
    await send(a2, chat, "second")
    await send(a, chat, "third")
    refused = await a2.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "x"})
    assert refused["ok"] is False and refused["error"]["code"] == "RATE_LIMITED"
    await a.close()
    await a2.close()
    deadline = time.monotonic() + 10
    while await presence_of(node2, alice) != "offline":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # a revocation sent to node 1 closes bob's socket on node 2
    assert (await post_event(node1, {"type": "session:revoke", "userId": bob})).code == 202
    await asyncio.wait_for(asyncio.gather(b.disconnected.wait(), b1.disconnected.wait()), 5)


@pytest.mark.gen_test(timeout=120)
async def test_delivery_resumes_after_a_cluster_shard_restarts(start_gateway, own_redis_cluster, fakes):
    env = {**ENV, "REDIS_URL": own_redis_cluster.url}
    node1, node2 = start_gateway(env), start_gateway(env)
    alice, bob = uid("alice"), uid("bob")
    chat = uid("chat")
    fakes.add_chat(chat, [alice, bob])
    a, b = await connected(node1, alice), await connected(node2, bob)
    for client in (a, b):
        assert (await client.call("chat:join", {"chatId": chat}))["ok"]
    await send(a, chat, "before")
    await b.next("message:new")
    own_redis_cluster.restart(own_redis_cluster.node_of("gw:room:{chat:" + chat + "}"))
    deadline = time.monotonic() + 30
    i = 0
    while True:  # messages sent while the node re-subscribes may be lost; later ones arrive
        i += 1
        reply = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": f"after-{i}"})
        if reply["ok"]:
            try:
                await b.next("message:new", count=2, timeout=0.5)
                break
            except AssertionError:
                pass
        assert time.monotonic() < deadline, "delivery did not resume"
    assert texts(b)[0] == "before" and texts(b)[1].startswith("after-")
    for client in (a, b):
        await client.close()
