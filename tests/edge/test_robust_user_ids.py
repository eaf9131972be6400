"""User ids outside visible ASCII (issue 7, point 7): a validly signed token whose ``sub`` holds
U+2028, CJK or Latin-1 is refused as INVALID_TOKEN on every transport, never a 500 and never
sent upstream as raw bytes."""

from __future__ import annotations

import json

import pytest
import socketio
from tornado.httpclient import AsyncHTTPClient

from internal_client import running_nodes
from robust_support import SocketClient, make_token

ODD_IDS = ["用户", "a\u2028b", "jos\u00e9", "tab\tbed", "sp ace", "x" * 129, "\ud800"]


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams)


async def get(gw, path: str, token: str):
    return await AsyncHTTPClient().fetch(gw.url(path), raise_error=False,
                                         headers={"Authorization": f"Bearer {token}"})


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("user_id", ODD_IDS, ids=lambda u: u.encode("unicode_escape").decode()[:12])
async def test_odd_user_id_is_refused_on_http_sockets_and_presence(nodes, stubs, user_id):
    token = make_token(user_id)
    for gw in nodes:
        response = await get(gw, "/api/users/me", token)
        assert response.code == 401, response.body
        assert json.loads(response.body)["error"]["code"] == "INVALID_TOKEN"
        response = await get(gw, "/api/presence?userIds=u1", token)
        assert response.code == 401
        # On a public route the bad token is ignored: forwarded anonymously, no identity header.
        response = await get(gw, "/api/auth/whoami", token)
        assert response.code == 200
        assert "x-user-id" not in json.loads(response.body)["headers"]
        client = SocketClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(gw, token)
        assert client.connect_error["data"]["code"] == "INVALID_TOKEN"
        hello = await SocketClient().connect(gw, None)
        reply = await hello.call("auth:hello", {"token": token})
        assert reply["ok"] is False and reply["error"]["code"] in ("INVALID_TOKEN", "VALIDATION_FAILED")
        await hello.close()
    assert not stubs.received("users")
    for gw in nodes:
        assert '"status": 500' not in gw.logs() and '"status":500' not in gw.logs()


@pytest.mark.gen_test(timeout=30)
async def test_visible_ascii_ids_still_work(nodes, stubs):
    for user_id in ("u-1", "user@example.com", "auth0|5f7c8ec7", "42"):
        response = await get(nodes[0], "/api/users/me", make_token(user_id))
        assert response.code == 200
        assert json.loads(response.body)["headers"]["x-user-id"] == user_id


@pytest.mark.gen_test(timeout=30)
async def test_socket_ids_with_a_final_newline_are_refused(nodes, stubs):
    """``^...$`` lets "c1\\n" through (``$`` matches before a final newline); ids are anchored
    with ``\\Z`` (found by the hypothesis suite)."""
    client = await SocketClient().connect(nodes[1], make_token("nl-user"))
    for event, payload in (("chat:join", {"chatId": "c1\n"}),
                           ("message:send", {"chatId": "c1", "clientMessageId": "m1\n", "text": "x"}),
                           ("message:read", {"chatId": "c1", "messageIds": ["m1\n"]})):
        reply = await client.call(event, payload)
        assert reply["ok"] is False and reply["error"]["code"] == "VALIDATION_FAILED", (event, reply)
    assert (await client.call("chat:leave", {"chatId": "c1"}))["ok"]  # positive marker
    assert not stubs.received("chats") and not stubs.received("messages")
    await client.close()
