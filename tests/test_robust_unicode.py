"""Text that is not valid Unicode (lone UTF-16 surrogates) is refused at every entry, and a bad
payload never counts as Redis being lost (issue 7, point 1). Two nodes on a real Redis."""

from __future__ import annotations

import asyncio
import json

import pytest

from internal_client import post_event, running_nodes
from robust_support import ChatFakes, connected, eventually, join, log_lines, uid

LONE = ("broken \ud800 text", "\udc00", "ok\ud83d")  # high, low, and a high at the very end


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams, env={"PRESENCE_TTL": "3"})


@pytest.fixture
def fakes(stubs):
    return ChatFakes(stubs)


@pytest.mark.gen_test(timeout=60)
async def test_lone_surrogates_on_sockets_are_refused_and_cost_nobody_anything(nodes, fakes):
    node1, node2 = nodes
    alice, bob, chat = uid("alice"), uid("bob"), uid("chat")
    fakes.add_chat(chat, [alice, bob])
    b = await connected(node2, bob)
    await join(b, chat)
    a = await connected(node1, alice)
    await join(a, chat)
    # The burst that used to cut node 1 off Redis: sixteen lone-surrogate texts.
    for i in range(16):
        reply = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"),
                                              "text": LONE[i % len(LONE)]})
        assert reply["ok"] is False and reply["error"]["code"] == "VALIDATION_FAILED", reply
        assert "Unicode" in reply["error"]["message"]
    for event, payload in (("reaction:set", {"chatId": chat, "messageId": "m1", "emoji": "\ud800"}),
                           ("chat:create", {"type": "group", "memberIds": [bob], "name": "\udfff"}),
                           ("auth:hello", {"token": "\ud800"})):
        reply = await a.call(event, payload)
        assert reply["error"]["code"] == "VALIDATION_FAILED", (event, reply)
    # Positive marker: a good message still crosses from node 1 to node 2.
    reply = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "fine"})
    assert reply["ok"], reply
    assert (await b.next("message:new"))[0]["message"]["text"] == "fine"
    assert len(b.events("message:new")) == 1
    assert [r.json()["text"] for r in fakes.created()] == ["fine"]  # nothing bad upstream
    # Node 1 never thought Redis was lost: ready all along, presence untouched.
    assert node1.get_json("/readyz")[0] == 200
    for gw in (node1, node2):
        assert not log_lines(gw, "redis lost") and not log_lines(gw, "UnicodeEncodeError")
    assert not [p for p in b.events("presence:update") if p["status"] == "offline"]
    await a.close()
    await b.close()


@pytest.mark.gen_test(timeout=60)
async def test_lone_surrogates_at_the_event_ingress_are_refused_on_http_and_dropped_on_redis(
        nodes, redis_server, fakes):
    node1, node2 = nodes
    bob, chat = uid("bob"), uid("chat")
    fakes.add_chat(chat, [bob])
    b = await connected(node2, bob)
    await join(b, chat)
    bad = {"event": "message:edit", "to": {"chat": chat}, "data": {"message": {"text": "x\ud800"}}}
    raw = json.dumps(bad)  # ASCII escapes: "\ud800", as JavaScript or Python would write it
    assert "\\ud800" in raw
    response = await post_event(node1, raw)
    assert response.code == 400, response.body
    error = json.loads(response.body)["error"]
    assert error["code"] == "VALIDATION_FAILED" and "Unicode" in error["message"]
    # The same text PUBLISHed straight to Redis: each node logs and drops it.
    client = redis_server.client()
    client.publish("gateway:events", raw)
    for gw in (node1, node2):
        assert await eventually(lambda gw=gw: _async(log_lines(gw, "not valid Unicode")))
    # Positive marker: a good event after the bad ones reaches bob, the bad ones never did.
    good = {"event": "message:edit", "to": {"chat": chat}, "data": {"message": {"text": "good"}}}
    assert (await post_event(node1, good)).code == 202
    client.publish("gateway:events", json.dumps({**good, "data": {"message": {"text": "good2"}}}))
    edits = await b.next("message:edit", count=2)
    assert [e["message"]["text"] for e in edits] == ["good", "good2"]
    for gw in (node1, node2):
        assert gw.get_json("/readyz")[0] == 200 and not log_lines(gw, "redis lost")
    client.close()
    await b.close()


async def _async(value):
    return value


@pytest.mark.gen_test(timeout=60)
async def test_upstream_answer_with_a_lone_surrogate_is_an_upstream_error_not_an_outage(nodes, fakes, stubs):
    node1, node2 = nodes
    alice, chat = uid("alice"), uid("chat")
    fakes.add_chat(chat, [alice])
    a = await connected(node1, alice)
    await join(a, chat)

    def broken_service(record, handler):
        handler.set_header("Content-Type", "application/json")
        handler.finish('{"message":{"id":"m1","text":"\\ud800"}}')

    stubs.hooks[("messages", "POST", "/")] = broken_service
    reply = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "hi"})
    assert reply["ok"] is False and reply["error"]["code"] == "UPSTREAM_ERROR", reply
    assert node1.get_json("/readyz")[0] == 200 and not log_lines(node1, "redis lost")
    assert (await a.call("chat:leave", {"chatId": chat}))["ok"]  # the socket is fine
    await a.close()


def test_only_connection_level_errors_count_as_redis_lost():
    import redis.exceptions as rx

    from tornado_gateway.cluster.redis_link import connection_lost

    for exc in (rx.ConnectionError("reset"), rx.TimeoutError("slow"), asyncio.TimeoutError(),
                ConnectionRefusedError(), OSError("unreachable")):
        assert connection_lost(exc), exc
    for exc in (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
                rx.ResponseError("NOSCRIPT"), rx.DataError("bad arg"), ValueError("x"),
                TypeError("x"), rx.MaxConnectionsError("busy")):
        assert not connection_lost(exc), exc


def test_every_json_encode_and_decode_of_the_gateway_goes_through_codec():
    """One decoder and one encoder (issue 7, point 1): no module but codec.py calls the json
    module (logs.py writes the log lines, which are not a way in or out for clients)."""
    import ast
    import pathlib

    package = pathlib.Path(__file__).resolve().parents[1] / "tornado_gateway"
    offenders = []
    for path in package.rglob("*.py"):
        if path.name in ("codec.py", "logs.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("dumps", "loads", "dump", "load")
                    and isinstance(node.value, ast.Name) and node.value.id == "json"):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == []
