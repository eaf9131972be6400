"""Deep nesting and non-JSON (issue 7, point 10): a socket payload nested thousands of levels
deep is answered VALIDATION_FAILED on a socket that stays open, with one warning line and no
RecursionError; at the ingress such bodies, NaN and Infinity are 400 on HTTP and dropped on Redis."""

from __future__ import annotations

import json

import pytest

from internal_client import post_event, running_nodes
from robust_support import ChatFakes, RawJSON, connected, eventually, join, log_lines, raw_connected, uid


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams)


def nested(depth: int) -> RawJSON:
    return RawJSON("[" * depth + "{}" + "]" * depth)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_deeply_nested_socket_payload_is_refused_and_the_socket_stays_open(nodes, stubs, transport):
    node1, node2 = nodes
    fakes = ChatFakes(stubs)
    alice, bob, chat = uid("alice"), uid("bob"), uid("chat")
    fakes.add_chat(chat, [alice, bob])
    b = await connected(node2, bob)
    await join(b, chat)
    a = await raw_connected(node1, alice, transports=(transport,))
    await join(a, chat)
    deep = nested(10_000)  # about 20 KB on the wire
    assert len(deep.text) > 20_000
    reply = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "x",
                                          "extra": deep})
    assert reply["ok"] is False and reply["error"]["code"] == "VALIDATION_FAILED", reply
    assert "nested deeper than 64" in reply["error"]["message"]
    reply = await a.call("chat:join", {"chatId": nested(70)})  # 70 levels: past 64
    assert reply["error"]["code"] == "VALIDATION_FAILED"
    await a.emit("message:send", deep)  # no ack asked: an error event instead
    error = (await a.next("error"))[0]
    assert error["code"] == "VALIDATION_FAILED" and error["event"] == "message:send"
    # The socket is still open and works: a good message crosses to node 2.
    ok = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "after"})
    assert ok["ok"], ok
    assert (await b.next("message:new"))[0]["message"]["text"] == "after"
    assert a.sio.connected and not a.disconnected.is_set()
    logs = node1.logs()
    assert "RecursionError" not in logs and "Traceback" not in logs
    sid = a.sio.get_sid()
    refusals = [line for line in log_lines(node1, "refused: JSON nested deeper") if sid in line]
    assert len(refusals) == 3 and all('"level": "warning"' in line for line in refusals), refusals
    await a.close()
    await b.close()


BAD_BODIES = {
    "deep": '{"event":"message:edit","to":{"chat":"c1"},"data":{"x":' + "[" * 5000 + "]" * 5000 + "}}",
    "depth 65": '{"event":"message:edit","to":{"chat":"c1"},"data":{"x":' + "[" * 63 + "]" * 63 + "}}",
    "NaN": '{"event":"message:edit","to":{"chat":"c1"},"data":{"x":NaN}}',
    "Infinity": '{"event":"message:edit","to":{"chat":"c1"},"data":{"x":Infinity}}',
    "-Infinity": '{"event":"message:edit","to":{"chat":"c1"},"data":{"x":-Infinity}}',
    "huge number": '{"event":"message:edit","to":{"chat":"c1"},"data":{"x":1e999}}',
    "revoke NaN": '{"type":"session:revoke","userId":"u1","before":NaN}',
}


@pytest.mark.gen_test(timeout=60)
async def test_deep_and_non_json_ingress_bodies_are_400_on_http_and_dropped_on_redis(nodes, stubs,
                                                                                   redis_server):
    node1, node2 = nodes
    fakes = ChatFakes(stubs)
    bob, chat = uid("bob"), uid("chat")
    fakes.add_chat(chat, [bob])
    b = await connected(node2, bob)
    await join(b, chat)
    for name, body in BAD_BODIES.items():
        body = body.replace('"c1"', json.dumps(chat))
        response = await post_event(node1, body)
        assert response.code == 400, (name, response.code, response.body)
        assert json.loads(response.body)["error"]["code"] == "VALIDATION_FAILED"
    # depth 64 exactly is fine
    ok = '{"event":"message:edit","to":{"chat":%s},"data":{"x":%s}}' % (
        json.dumps(chat), "[" * 62 + "]" * 62)
    assert (await post_event(node1, ok)).code == 202
    client = redis_server.client()
    for body in BAD_BODIES.values():
        client.publish("gateway:events", body.replace('"c1"', json.dumps(chat)))
    client.publish("gateway:events", json.dumps({"event": "message:edit", "to": {"chat": chat},
                                                 "data": {"marker": "last"}}))
    edits = await b.next("message:edit", count=2)
    assert edits[-1] == {"marker": "last"} and len(edits) == 2  # the depth-64 one, then the marker
    for gw in (node1, node2):
        assert await eventually(lambda gw=gw: _now(len(log_lines(gw, "dropped invalid event")) >= 7))
        assert "RecursionError" not in gw.logs() and '"status": 500' not in gw.logs()
    client.close()
    await b.close()


async def _now(value):
    return value
