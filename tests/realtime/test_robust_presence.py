"""Presence in Redis mode (issue 7, points 2 and 3): stable while sockets live, once per change,
multi-device across nodes, rebuilt after Redis restarts empty, a dead node's users offline.

PRESENCE_TTL is 2 s here (claims last 1 s, renewed every 0.4 s), so the windows below each
span several renewals; every negative is checked after a positive marker event.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from internal_client import AUTH_ENV, post_event
from robust_support import ChatFakes, connected, eventually, join, log_lines, presence_of, uid

TTL = 2.0
ENV = {"PRESENCE_TTL": str(TTL), **AUTH_ENV}


@pytest.fixture
def fakes(stubs):
    return ChatFakes(stubs)


def statuses(client, user: str) -> list[str]:
    return [p["status"] for p in client.events("presence:update") if p["userId"] == user]


async def stays_online(gw, user: str, seconds: float) -> None:
    """Ask the node again and again for ``seconds``: the user must be online every time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await presence_of(gw, user) == "online", f"{user} shown offline while connected"
        await asyncio.sleep(0.1)


async def marker(sender, receiver, chat: str) -> None:
    """A message from ``sender`` that ``receiver`` gets: everything sent before it has arrived."""
    text = uid("marker")
    reply = await sender.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": text})
    assert reply["ok"], reply

    async def arrived():
        return [m for m in receiver.events("message:new") if m["message"]["text"] == text]

    assert await eventually(arrived, timeout=5)


@pytest.mark.gen_test(timeout=60)
async def test_presence_is_stable_once_per_change_and_multi_device_across_nodes(
        start_gateway, redis_server, fakes):
    env = {**ENV, "REDIS_URL": redis_server.url}
    node1, node2 = start_gateway(env), start_gateway(env)
    alice, bob, carol, chat = uid("alice"), uid("bob"), uid("carol"), uid("chat")
    fakes.add_chat(chat, [alice, bob, carol])
    b = await connected(node2, bob)
    await join(b, chat)
    c = await connected(node1, carol)
    await join(c, chat)
    phone = await connected(node1, alice)
    await join(phone, chat)
    await b.next("presence:update", count=2)  # carol, then alice: online
    # An idle connected user stays online for several claim lifetimes, as seen from both nodes.
    await stays_online(node2, alice, 1.5 * TTL)
    await stays_online(node1, alice, 0.5 * TTL)
    # A second device on the other node, joining the same chat: nothing changed for the room.
    laptop = await connected(node2, alice)
    await join(laptop, chat)
    await laptop.close()  # the second device leaves while the first is still connected
    await stays_online(node2, alice, 1.5 * TTL)
    await marker(c, b, chat)
    assert statuses(b, alice) == ["online"], b.events("presence:update")
    # The last device closes: offline, once.
    await phone.close()
    offline = await b.next("presence:update", count=3)
    assert offline[-1]["userId"] == alice and offline[-1]["status"] == "offline"
    assert await presence_of(node2, alice) == "offline"
    await marker(c, b, chat)
    assert statuses(b, alice) == ["online", "offline"]
    for gw in (node1, node2):
        assert not log_lines(gw, "never awaited")
    await b.close()
    await c.close()


@pytest.mark.gen_test(timeout=90)
async def test_redis_restarted_empty_presence_and_revocations_rebuilt_dead_node_still_swept(
        start_gateway, own_redis, fakes):
    env = {**ENV, "REDIS_URL": own_redis.url}
    node1, node2 = start_gateway(env), start_gateway(env)
    alice, bob, chat = uid("alice"), uid("bob"), uid("chat")
    fakes.add_chat(chat, [alice, bob])
    b = await connected(node2, bob)
    await join(b, chat)
    a = await connected(node1, alice)
    await join(a, chat)
    await b.next("presence:update")
    revoked_jti = uid("jti")
    response = await post_event(node2, {"type": "session:revoke", "userId": uid("mallory"),
                                        "jti": revoked_jti})
    assert response.code == 202
    redis = own_redis.client()
    assert redis.exists("gw:revoked:jti:" + revoked_jti)

    redis.set("test:canary", "1")  # nobody rebuilds it: its absence proves the wipe
    own_redis.restart()  # SIGKILL and start again: no persistence, every key gone
    redis = own_redis.client()
    # (the nodes may already be rebuilding presence keys by now, so the canary tells)
    assert not redis.exists("test:canary")
    started = time.monotonic()

    async def rebuilt():
        return (await presence_of(node2, alice) == "online"
                and redis.sismember("gw:presence:{u:" + alice + "}:chats", chat)
                and redis.exists("gw:revoked:jti:" + revoked_jti))

    assert await eventually(rebuilt, timeout=TTL + 3), "presence/revocations not rebuilt"
    assert time.monotonic() - started < TTL + 3
    await stays_online(node2, alice, TTL)
    # A node killed afterwards still has its users turn offline within PRESENCE_TTL.
    node1.kill()
    killed = time.monotonic()

    async def offline():
        return [p for p in b.events("presence:update") if p["userId"] == alice
                and p["status"] == "offline"]

    assert await eventually(offline, timeout=TTL + 2), "dead node's user stayed online"
    assert time.monotonic() - killed < TTL + 2
    assert await presence_of(node2, alice) == "offline"
    # Nothing was announced about alice but online (at join) and offline (at the kill).
    assert statuses(b, alice) == ["online", "offline"]
    await b.close()
