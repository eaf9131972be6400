"""One path layout per service (issue 7, point 12): the socket events' calls to the chats and
messages services go through the route table like the public path they mirror, so a service
sees the same path from ``GET /api/chats/{id}`` and from ``chat:join``, whatever path its URL has."""

from __future__ import annotations

import pytest
from tornado.httpclient import AsyncHTTPClient

from robust_support import ChatFakes, connected, join, make_token, uid


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("base", ["", "/svc/v1"], ids=["no-path", "with-path"])
async def test_socket_calls_reach_the_paths_the_public_routes_reach(start_gateway, redis_server,
                                                                   stubs, base):
    env = {"REDIS_URL": redis_server.url,
           "CHATS_SERVICE_URL": stubs.url("chats", base), "MESSAGES_SERVICE_URL": stubs.url("messages", base)}
    node1, node2 = start_gateway(env), start_gateway(env)
    fakes = ChatFakes(stubs, chats_base=base, messages_base=base)
    alice, bob, chat = uid("alice"), uid("bob"), uid("chat")
    fakes.add_chat(chat, [alice, bob])
    b = await connected(node2, bob)
    await join(b, chat)
    a = await connected(node1, alice)
    await join(a, chat)  # GET /api/chats/{chat}
    sent = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "hi"})
    assert sent["ok"], sent
    message_id = sent["data"]["message"]["id"]
    assert (await a.call("message:read", {"chatId": chat, "messageIds": [message_id]}))["ok"]
    assert (await a.call("reaction:set", {"chatId": chat, "messageId": message_id, "emoji": "+1"}))["ok"]
    assert (await a.call("reaction:set", {"chatId": chat, "messageId": message_id, "emoji": None}))["ok"]
    created = await a.call("chat:create", {"type": "direct", "memberIds": [bob]})
    assert created["ok"], created
    socket_calls = [(r.service, r.method, r.path) for r in stubs.received() if r.service in ("chats", "messages")]
    # The same calls through the public HTTP routes.
    stubs.clear()
    token = make_token(alice)
    http = AsyncHTTPClient()
    for method, path, body in (("GET", f"/api/chats/{chat}", None), ("POST", "/api/messages", b"{}"),
                               ("POST", "/api/messages/read", b"{}"),
                               ("PUT", f"/api/messages/{message_id}/reactions", b"{}"),
                               ("DELETE", f"/api/messages/{message_id}/reactions", None),
                               ("POST", "/api/chats", b"{}")):
        await http.fetch(node1.url(path), method=method, body=body, raise_error=False,
                         headers={"Authorization": f"Bearer {token}"})
    http_calls = [(r.service, r.method, r.path) for r in stubs.received()]
    expected = [("chats", "GET", f"{base}/{chat}"), ("messages", "POST", base or "/"),
                ("messages", "POST", f"{base}/read"), ("messages", "PUT", f"{base}/{message_id}/reactions"),
                ("messages", "DELETE", f"{base}/{message_id}/reactions"), ("chats", "POST", base or "/")]
    assert http_calls == expected
    assert sorted(set(socket_calls)) == sorted(set(expected)), socket_calls  # bob's join checked too
    await a.close()
    await b.close()
