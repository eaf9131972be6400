"""Idempotency of ``message:send`` is scoped to (user, chat) (issue 7, point 5): the same
clientMessageId in another chat is another message, delivered there; a retry in the same
chat, on either node, is still acked with the first message and not fanned out twice."""

from __future__ import annotations

import pytest

from internal_client import running_nodes
from robust_support import ChatFakes, connected, join, uid


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams)


@pytest.mark.gen_test(timeout=30)
async def test_same_client_message_id_in_another_chat_is_another_message(nodes, stubs):
    node1, node2 = nodes
    fakes = ChatFakes(stubs)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    chat1, chat2 = uid("chat"), uid("chat")
    fakes.add_chat(chat1, [alice, bob])
    fakes.add_chat(chat2, [alice, carol])
    b = await connected(node2, bob)
    await join(b, chat1)
    c = await connected(node2, carol)
    await join(c, chat2)
    a = await connected(node1, alice)
    await join(a, chat1)
    await join(a, chat2)
    cmid = uid("cmid")
    first = await a.call("message:send", {"chatId": chat1, "clientMessageId": cmid, "text": "to bob"})
    second = await a.call("message:send", {"chatId": chat2, "clientMessageId": cmid, "text": "to carol"})
    assert first["ok"] and second["ok"], (first, second)
    m1, m2 = first["data"]["message"], second["data"]["message"]
    assert m1["id"] != m2["id"] and m2["chatId"] == chat2 and m2["text"] == "to carol"
    assert (await c.next("message:new"))[0] == {"message": m2}
    assert (await b.next("message:new"))[0] == {"message": m1}
    # A retry in the first chat, from the other node: the first message again, no new fan-out.
    a2 = await connected(node2, alice)
    again = await a2.call("message:send", {"chatId": chat1, "clientMessageId": cmid, "text": "to bob"})
    assert again["data"]["message"] == m1
    marker = await a.call("message:send", {"chatId": chat1, "clientMessageId": uid("c"), "text": "next"})
    assert (await b.next("message:new", count=2))[1] == {"message": marker["data"]["message"]}
    assert len(b.events("message:new")) == 2 and len(c.events("message:new")) == 1
    assert len(fakes.created()) == 3  # to bob, to carol, next
    for client in (a, a2, b, c):
        await client.close()
