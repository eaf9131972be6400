"""One set of JWT rules on every transport (issue 7, point 6): the leeway that lets a token
20 s past ``exp`` through HTTP lets it through a socket too, and a socket's token counts as
expired once ``exp + leeway`` has passed, on both nodes."""

from __future__ import annotations

import asyncio

import pytest
import socketio
from tornado.httpclient import AsyncHTTPClient

from internal_client import running_nodes
from robust_support import SocketClient, make_token, uid


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams, env={"JWT_LEEWAY": "30",
                                                                "SOCKET_TOKEN_GRACE": "1"})


async def http_status(gw, token: str) -> int:
    response = await AsyncHTTPClient().fetch(gw.url("/api/users/me"), raise_error=False,
                                             headers={"Authorization": f"Bearer {token}"})
    return response.code


@pytest.mark.gen_test(timeout=30)
async def test_token_within_leeway_passes_http_and_sockets_alike(nodes, stubs):
    for gw in nodes:
        token = make_token(uid("late"), ttl=-20)  # 20 s past exp, leeway 30
        assert await http_status(gw, token) == 200
        client = await SocketClient().connect(gw, token)
        reply = await client.call("chat:leave", {"chatId": "c1"})
        assert reply == {"ok": True, "data": {"chatId": "c1"}}, reply
        hello = await SocketClient().connect(gw, None)
        assert (await hello.call("auth:hello", {"token": token}))["ok"]
        assert (await hello.call("chat:leave", {"chatId": "c1"}))["ok"]
        assert not client.events("error") and not hello.events("error")
        await client.close()
        await hello.close()


@pytest.mark.gen_test(timeout=30)
async def test_token_past_leeway_is_refused_on_both_and_expires_on_a_socket_at_exp_plus_leeway(nodes):
    gw = nodes[0]
    stale = make_token(uid("stale"), ttl=-40)
    assert await http_status(gw, stale) == 401
    refused = SocketClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(gw, stale)
    assert refused.connect_error["data"]["code"] == "TOKEN_EXPIRED"
    # 28.5 s past exp: accepted now, expired on the socket about 1.5 s later.
    client = await SocketClient().connect(gw, make_token(uid("edge"), ttl=-28.5))
    assert (await client.call("chat:leave", {"chatId": "c1"}))["ok"]
    error = (await client.next("error", timeout=5))[0]
    assert error["code"] == "TOKEN_EXPIRED"
    await asyncio.wait_for(client.disconnected.wait(), 5)  # grace 1 s, then closed
