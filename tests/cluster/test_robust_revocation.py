"""``session:revoke`` by user (no jti) disconnects the sockets of tokens without ``iat`` too, on
every node, as it refuses their HTTP requests (issue 7, point 4)."""

from __future__ import annotations

import asyncio
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from internal_client import post_event, running_nodes
from robust_support import SocketClient, make_token, uid


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams)


async def status_of(gw, token: str) -> int:
    response = await AsyncHTTPClient().fetch(gw.url("/api/users/me"), raise_error=False,
                                             headers={"Authorization": f"Bearer {token}"})
    return response.code


@pytest.mark.gen_test(timeout=30)
async def test_revoke_by_user_disconnects_sockets_of_tokens_without_iat_on_every_node(nodes, stubs):
    node1, node2 = nodes
    alice = uid("alice")
    no_iat = make_token(alice, iat=None)
    old_iat = make_token(alice, iat=int(time.time()) - 100)
    sockets = [await SocketClient().connect(node1, no_iat), await SocketClient().connect(node2, no_iat),
               await SocketClient().connect(node2, old_iat)]
    assert await status_of(node1, no_iat) == 200
    response = await post_event(node2, {"type": "session:revoke", "userId": alice})
    assert response.code == 202
    for client in sockets:
        await asyncio.wait_for(client.disconnected.wait(), 5)
        assert client.events("error")[-1]["code"] == "TOKEN_REVOKED"
    assert await status_of(node1, no_iat) == 401 and await status_of(node2, no_iat) == 401
    # A token issued after the revocation works on both transports.
    fresh = make_token(alice, iat=int(time.time()) + 2)
    assert await status_of(node1, fresh) == 200
    later = await SocketClient().connect(node1, fresh)
    assert (await later.call("chat:leave", {"chatId": "c1"}))["ok"]
    await later.close()
