"""A burst of chat:join from many sockets at once: the membership GETs of one loop turn may
share upstream connections (pipelined), and every socket still gets its own answer."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chat_fakes import ChatFakes, SocketClient
from harness import make_token

SOCKETS = 24


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


@pytest.mark.gen_test(timeout=60)
async def test_joins_at_once_each_get_their_own_membership_answer(start_gateway, stubs):
    fakes = ChatFakes(stubs)
    gw = start_gateway({"SOCKET_RATE_CONNECT": "1000/60"})
    users = [uid(f"burst{i}") for i in range(SOCKETS)]
    chat = uid("chat")
    fakes.add_chat(chat, users[::2])  # every other user is a member
    tokens = [make_token(user) for user in users]
    clients = [await SocketClient().connect(gw, token) for token in tokens]
    try:
        # even: member (ok); odd: not a member (FORBIDDEN); every third also asks an unknown chat
        asks = [(client, chat if i % 3 else uid("nochat")) for i, client in enumerate(clients)]
        acks = await asyncio.gather(*[client.call("chat:join", {"chatId": chat_id}) for client, chat_id in asks])
        for i, (ack, (_, chat_id)) in enumerate(zip(acks, asks)):
            if chat_id != chat:
                assert ack["error"]["code"] == "NOT_FOUND", (i, ack)
            elif i % 2 == 0:
                assert ack == {"ok": True, "data": {"chatId": chat}}, (i, ack)
            else:
                assert ack["error"]["code"] == "FORBIDDEN", (i, ack)
        gets = [r for r in stubs.received("chats") if r.method == "GET"]
        # each GET carried the identity of the socket it was made for, and each socket's once
        asked = sorted((r.headers["x-user-id"], r.path.rsplit("/", 1)[-1]) for r in gets)
        assert asked == sorted((user, chat_id) for user, (_, chat_id) in zip(users, asks))
        for record in gets:
            user = record.headers["x-user-id"]
            assert record.headers["authorization"] == "Bearer " + tokens[users.index(user)]
        # the members are in the room: a typing event of one reaches another member
        members = [clients[i] for i in range(0, SOCKETS, 2) if asks[i][1] == chat]
        assert (await members[0].call("typing:start", {"chatId": chat}))["ok"]
        got = (await members[1].next("typing:update"))[0]
        assert got["userId"] == users[clients.index(members[0])] and got["typing"] is True
    finally:
        await asyncio.gather(*(client.close() for client in clients))
