"""Packets up to 1 MB are read and validated (issue 7, point 11): a 200,000-character text is
answered VALIDATION_FAILED on a socket that stays open, with python-socketio and with the
official JS client, on both transports; only a packet over 1 MB closes the transport."""

from __future__ import annotations

import asyncio

import pytest

from internal_client import running_nodes
from robust_support import ChatFakes, connected, join, run_js, uid


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_long_text_is_refused_on_an_open_socket_only_over_1mb_is_closed(nodes, stubs, transport):
    node1, node2 = nodes
    fakes = ChatFakes(stubs)
    alice, bob, chat = uid("alice"), uid("bob"), uid("chat")
    fakes.add_chat(chat, [alice, bob])
    b = await connected(node2, bob)
    await join(b, chat)
    a = await connected(node1, alice, transports=(transport,))
    await join(a, chat)
    for size in (200_000, 990_000):
        reply = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"),
                                              "text": "x" * size})
        assert reply["ok"] is False and reply["error"]["code"] == "VALIDATION_FAILED", reply
        assert "longer than" in reply["error"]["message"]
    ok = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "short"})
    assert ok["ok"], ok
    assert (await b.next("message:new"))[0]["message"]["text"] == "short"
    assert not fakes.created() or [r.json()["text"] for r in fakes.created()] == ["short"]
    # Over 1 MB: the transport is closed (Socket.IO's own rule), the client sees a disconnect.
    await a.emit("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "y" * 1_100_000})
    await asyncio.wait_for(a.disconnected.wait(), 10)
    assert node1.get_json("/readyz")[0] == 200
    await b.close()


@pytest.mark.gen_test(timeout=90)
@pytest.mark.parametrize("transports", [["websocket"], ["polling"]], ids=["websocket", "polling"])
async def test_js_client_hostile_payloads_get_answers_and_the_socket_stays(nodes, stubs, transports):
    node1, node2 = nodes
    fakes = ChatFakes(stubs)
    alice, bob, chat = uid("alice"), uid("bob"), uid("chat")
    fakes.add_chat(chat, [alice, bob])
    b = await connected(node2, bob)
    await join(b, chat)
    from robust_support import make_token

    out = await run_js("hostile", url=node1.base, token=make_token(alice), chat=chat,
                       transports=transports, oversize=True)
    acks = out["acks"]
    assert acks["join"]["ok"] is True
    for name in ("loneSurrogate", "loneLow", "longText", "deep"):
        assert acks[name]["ok"] is False and acks[name]["error"]["code"] == "VALIDATION_FAILED", (name, acks)
    assert "Unicode" in acks["loneSurrogate"]["error"]["message"]
    assert acks["valid"]["ok"] is True and out["connectedAfterRefusals"] is True
    assert out["oversizeReason"] in ("transport close", "transport error"), out
    assert (await b.next("message:new"))[0]["message"]["text"] == "still here"
    assert [m["message"]["text"] for m in b.events("message:new")] == ["still here"]
    await b.close()
