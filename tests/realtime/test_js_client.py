"""The main Socket.IO flows with the official JavaScript client (socket.io-client, pinned in tests/js)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from chat_fakes import ChatFakes
from harness import ORIGIN, GatewayProcess, make_token, node_with_packages

JS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "js")


@pytest.fixture(scope="module")
def node_client():
    """``node`` with tests/js/node_modules installed (npm ci on first use)."""
    return node_with_packages(JS_DIR)


@pytest.fixture(scope="module")
def js_gateway(stub_upstreams):
    process = GatewayProcess({**stub_upstreams.env(), "AUTH_TIMEOUT": "3"}).start()
    yield process
    process.stop()


def run_driver(node, scenario: str, **options) -> dict:
    result = subprocess.run([node, "driver.js", scenario, json.dumps(options)], cwd=JS_DIR,
                            capture_output=True, text=True, timeout=60)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"driver printed nothing: {result.stdout} {result.stderr}"
    out = json.loads(lines[-1])
    assert result.returncode == 0 and "error" not in out, out
    return out


def test_js_client_main_flow(node_client, js_gateway, stubs):
    fakes = ChatFakes(stubs)
    fakes.add_chat("jschat", ["alice-js", "bob-js"])
    out = run_driver(node_client, "main", url=js_gateway.base, origin=ORIGIN, chat="jschat",
                     alice=make_token("alice-js"), bob=make_token("bob-js"))
    check_main_flow(out, fakes)


def test_js_client_main_flow_across_two_nodes(node_client, start_gateway, redis_server, stubs):
    """The same flow with alice and bob on two nodes sharing one Redis (room-scoped delivery)."""
    env = {"REDIS_URL": redis_server.url, "AUTH_TIMEOUT": "3"}
    node1, node2 = start_gateway(env), start_gateway(env)
    fakes = ChatFakes(stubs)
    fakes.add_chat("jschat2", ["alice-js", "bob-js"])
    out = run_driver(node_client, "main", url=node1.base, bobUrl=node2.base, origin=ORIGIN,
                     chat="jschat2", alice=make_token("alice-js"), bob=make_token("bob-js"))
    check_main_flow(out, fakes, "jschat2")


def check_main_flow(out: dict, fakes: ChatFakes, chat: str = "jschat") -> None:
    assert out["bobJoin"] == {"ok": True, "data": {"chatId": chat}}
    assert out["aliceJoin"]["ok"] is True
    assert out["presence"] == {"userId": "alice-js", "status": "online"}
    assert out["typingAck"] == {"ok": True, "data": {}}
    assert out["typing"] == {"chatId": chat, "userId": "alice-js", "typing": True}
    message = out["sendAck"]["data"]["message"]
    assert out["sendAck"]["ok"] is True and message["text"] == "hello from node"
    assert out["messageNew"] == {"message": message}
    assert out["receipt"]["messageId"] == message["id"] and out["receipt"]["userId"] == "bob-js"
    assert out["receipt"]["chatId"] == chat
    assert out["badPayload"]["ok"] is False
    assert out["badPayload"]["error"]["code"] == "VALIDATION_FAILED"
    assert out["bobTransport"] == "websocket"  # polling upgraded
    # message:new is not sent back to the sending socket; typing is not echoed
    assert not [e for e, _ in out["events"]["alice"] if e in ("message:new", "typing:update")]
    # the upstream call carried the identity, a request id and the caller's token
    sent = fakes.created()[0]
    assert sent.headers["x-user-id"] == "alice-js"
    assert sent.headers["authorization"].startswith("Bearer ")
    assert sent.headers["idempotency-key"] == "js-1" and sent.headers["x-request-id"]


def test_js_client_bad_and_expired_token_refused(node_client, js_gateway):
    out = run_driver(node_client, "badToken", url=js_gateway.base, origin=ORIGIN, token="not-a-jwt")
    assert out["data"]["code"] == "INVALID_TOKEN"
    out = run_driver(node_client, "badToken", url=js_gateway.base, origin=ORIGIN,
                     token=make_token("late", ttl=-3600))
    assert out["data"]["code"] == "TOKEN_EXPIRED"


def test_js_client_disallowed_origin_refused_on_both_transports(node_client, js_gateway):
    out = run_driver(node_client, "badOrigin", url=js_gateway.base, origin=ORIGIN, token=make_token("o1"))
    assert set(out) == {"websocket", "polling"}
    assert out["websocket"]["data"]["code"] == "ORIGIN_NOT_ALLOWED"  # connect_error names the refusal
