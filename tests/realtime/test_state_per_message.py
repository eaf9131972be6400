"""State per message: at most one Redis key per message, local fallbacks bounded in bytes.

Two real nodes on one real redis-server of this test alone; a chat of four
users spread over both nodes, every device acking ``message:new`` (so delivered
receipts flow); then the keys in Redis are counted.
"""

from __future__ import annotations

import uuid

import pytest

from chat_fakes import ChatFakes, connected


@pytest.fixture
def fakes(stubs):
    return ChatFakes(stubs)


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


@pytest.mark.gen_test(timeout=60)
async def test_each_message_costs_at_most_one_redis_key(start_gateway, own_redis, fakes):
    env = {"REDIS_URL": own_redis.url}
    node1, node2 = start_gateway(env), start_gateway(env)
    users = [uid("u") for _ in range(4)]
    chat = uid("chat")
    fakes.add_chat(chat, users)
    clients = [await connected(node1 if i % 2 else node2, user) for i, user in enumerate(users)]
    for client in clients:
        assert (await client.call("chat:join", {"chatId": chat}))["ok"]
    redis = own_redis.client()
    before = set(redis.keys("*"))
    messages = 30
    ids = []
    for n in range(messages):
        sender = clients[n % 2]  # two senders
        reply = await sender.call("message:send", {"chatId": chat, "clientMessageId": f"c{n}", "text": f"m{n}"})
        assert reply["ok"], reply
        ids.append(reply["data"]["message"]["id"])
    # every receipt arrived (3 recipients per message), so all dedupe writes were made
    for i, sender in enumerate(clients[:2]):
        mine = [ids[n] for n in range(messages) if n % 2 == i]
        receipts = await sender.next("receipt:delivered", timeout=20, count=3 * len(mine))
        assert sorted((r["messageId"], r["userId"]) for r in receipts) == \
            sorted((m, u) for m in mine for u in users if u != users[i])
    # a retried send is still recognised (its record is in the sender's hash)
    again = await clients[0].call("message:send", {"chatId": chat, "clientMessageId": "c0", "text": "m0"})
    assert again["data"]["message"]["id"] == ids[0]
    new = [k.decode() if isinstance(k, bytes) else k for k in set(redis.keys("*")) - before]
    per_message = [k for k in new if not k.startswith("gw:presence") and not k.startswith("gw:node")]
    receipts = [k for k in per_message if k.startswith("gw:receipt:")]
    sends = [k for k in per_message if k.startswith("gw:send:")]
    assert len(receipts) == messages, receipts[:5]
    assert len(sends) <= 2 * 2, sends  # one hash per sender and UTC day (two if the day turned)
    assert len(per_message) <= messages + 4, sorted(per_message)[:10]
    assert all(0 < redis.ttl(k) <= 600 for k in receipts)
    assert {redis.scard(k) for k in receipts} == {3}
    for client in clients:
        await client.close()


def test_local_fallback_is_bounded_in_bytes_not_entries():
    from tornado_gateway.realtime.dedupe import ENTRY_OVERHEAD, _LocalTtlDict

    local = _LocalTtlDict(max_bytes=64 * 1024)
    big = "x" * 4000
    for n in range(100):
        local.set(f"k{n}", big, 3600)
    assert local.bytes <= 64 * 1024
    assert len(local.entries) == (64 * 1024) // (len("k10") + 4000 + ENTRY_OVERHEAD)
    assert local.get("k99") == big and local.get("k0") is None  # the oldest went first
    local.pop("k99")
    assert local.bytes == sum(entry[2] for entry in local.entries.values())


def test_pinger_pings_waiting_sockets_once_and_forgets_closed_ones():
    from tornado_gateway.realtime.wire import Pinger

    class Socket:
        def __init__(self, last_ping=None, closed=False):
            self.last_ping, self.closed, self.closing, self.pings = last_ping, closed, False, 0

        def ping(self):
            self.pings += 1
            self.last_ping = 1.0

    waiting, unanswered, closed = Socket(), Socket(last_ping=5.0), Socket(closed=True)
    slot = {waiting, unanswered, closed}
    Pinger._turn(slot)
    Pinger._turn(slot)  # no PONG came in between: no second PING (engineio's service task times it out)
    assert (waiting.pings, unanswered.pings, closed.pings) == (1, 0, 0)
    assert slot == {waiting, unanswered}
