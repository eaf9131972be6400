"""Event ingress: the internal listener's auth, event validation on both paths, fan-out.

Two gateway nodes share one real redis-server (module-scoped, so the suite
stays fast); sockets are real python-socketio clients.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from harness import make_token
from internal_client import (AUTH_ENV, basic_header, digest_challenge, digest_header, fetch,
                             open_sockets, post_event, running_nodes)


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    """Two gateway nodes on one Redis, with internal credentials."""
    yield from running_nodes(redis_server, stub_upstreams)


@pytest.fixture(scope="module")
def node(nodes):
    return nodes[0]


# -- authentication of the internal listener ----------------------------------

@pytest.mark.gen_test
async def test_no_credentials_gets_401_with_digest_and_basic_challenges(node):
    for path, method, body in (("/internal/events", "POST", "{}"), ("/metrics", "GET", None)):
        response = await fetch(node, path, method, body, auth=None)
        assert response.code == 401
        challenges = response.headers.get_list("WWW-Authenticate")
        assert any(c.startswith("Digest ") and 'qop="auth"' in c for c in challenges)
        assert any(c.startswith("Basic ") for c in challenges)
        assert json.loads(response.body)["error"]["code"] == "UNAUTHENTICATED"


@pytest.mark.gen_test
async def test_wrong_basic_credentials_get_401(node):
    for headers in (basic_header(password="wrong"), basic_header(user="other"),
                    {"Authorization": "Basic !!!not-base64"}, {"Authorization": "Basic Zm9v"}):
        response = await fetch(node, "/metrics", headers=headers, auth=None)
        assert response.code == 401, headers


@pytest.mark.gen_test
async def test_right_basic_and_digest_credentials_are_accepted(node):
    assert (await fetch(node, "/metrics", auth="basic")).code == 200
    assert (await fetch(node, "/metrics", auth="digest")).code == 200
    response = await post_event(node, {"event": "chat:updated", "to": {"user": "nobody"},
                                       "data": {"chat": {"id": "c"}}}, auth="digest")
    assert response.code == 202


@pytest.mark.gen_test
async def test_wrong_digest_credentials_get_401(node):
    first = await fetch(node, "/metrics", auth=None)
    challenge = digest_challenge(first)
    for headers in (digest_header(challenge, "GET", "/metrics", password="wrong"),
                    digest_header(challenge, "GET", "/metrics", user="other"),
                    digest_header(challenge, "GET", "/internal/events"),  # signed for another URI
                    digest_header(challenge.replace("opaque=\"", "opaque=\"0"), "GET", "/metrics"),
                    {"Authorization": "Digest username=x"}, {"Authorization": "Digest garbage"}):
        response = await fetch(node, "/metrics", headers=headers, auth=None)
        assert response.code == 401, headers


@pytest.mark.gen_test
async def test_healthz_on_internal_listener_needs_no_credentials(node):
    response = await fetch(node, "/healthz", auth=None)
    assert response.code == 200


@pytest.mark.gen_test
async def test_listener_without_configured_credentials_refuses_everything(start_gateway):
    bare = start_gateway({"INTERNAL_AUTH_USER": "", "INTERNAL_AUTH_PASSWORD": ""})
    event = {"event": "chat:updated", "to": {"user": "u1"}, "data": {}}
    empty_basic = {"Authorization": "Basic " + "Og=="}  # ":" — the empty user and password
    for headers in ({}, basic_header(), empty_basic):
        for path, method, body in (("/internal/events", "POST", json.dumps(event)),
                                   ("/metrics", "GET", None)):
            response = await fetch(bare, path, method, body, headers=headers, auth=None)
            assert response.code == 403, (path, headers)
            assert "INTERNAL_AUTH_USER" in json.loads(response.body)["error"]["message"]


def test_production_refuses_to_start_without_internal_credentials():
    from harness import ACCESS_SECRET, REFRESH_SECRET, run_gateway_cli

    result = run_gateway_cli([], {"NODE_ENV": "production", "JWT_ACCESS_SECRET": ACCESS_SECRET,
                                  "JWT_REFRESH_SECRET": REFRESH_SECRET, "REDIS_URL": "memory://"})
    assert result.returncode == 2
    assert "INTERNAL_AUTH_USER" in result.stderr


# -- validation ----------------------------------------------------------------

BAD_EVENTS = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ({"event": "message:send", "to": {"chat": "c1"}, "data": {}}, "unknown event"),
    ({"event": "connect", "to": {"chat": "c1"}, "data": {}}, "unknown event"),
    ({"event": 5, "to": {"chat": "c1"}, "data": {}}, "unknown event"),
    ({"to": {"chat": "c1"}, "data": {}}, "missing field"),
    ({"event": "message:new", "to": {"room": "c1"}, "data": {}}, "'to'"),
    ({"event": "message:new", "to": {"chat": "c1", "user": "u1"}, "data": {}}, "'to'"),
    ({"event": "message:new", "to": "c1", "data": {}}, "'to'"),
    ({"event": "message:new", "to": {"chat": ""}, "data": {}}, "to.chat"),
    ({"event": "message:new", "to": {"chat": ["c1"]}, "data": {}}, "to.chat"),
    ({"event": "message:new", "to": {"users": []}, "data": {}}, "to.users"),
    ({"event": "message:new", "to": {"users": ["u1", None]}, "data": {}}, "to.users"),
    ({"event": "message:new", "to": {"user": "u1"}, "data": "text"}, "'data'"),
    ({"event": "message:new", "to": {"user": "u1"}, "data": {}, "extra": 1}, "unknown field"),
    ({"type": "session:kill", "userId": "u1"}, "unknown type"),
    ({"type": "session:revoke"}, "missing field"),
    ({"type": "session:revoke", "userId": "u1", "before": "yesterday"}, "'before'"),
    ({"type": "session:revoke", "userId": "u1", "jti": {"x": 1}}, "'jti'"),
]


@pytest.mark.parametrize("body, reason", BAD_EVENTS)
@pytest.mark.gen_test
async def test_bad_event_gets_400_with_a_clear_message(node, body, reason):
    response = await post_event(node, body)
    assert response.code == 400
    error = json.loads(response.body)["error"]
    assert error["code"] == "VALIDATION_FAILED"
    assert reason in error["message"]


@pytest.mark.gen_test
async def test_oversized_event_body_is_refused_before_reading_it(node):
    huge = json.dumps({"event": "message:new", "to": {"user": "u1"}, "data": {"t": "x" * 300_000}})
    response = await post_event(node, huge)
    assert response.code == 413
    assert json.loads(response.body)["error"]["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.gen_test
async def test_invalid_events_on_the_channel_are_logged_without_payload_and_dropped(node, redis_server):
    secret = "s3cr3t-payload-value"
    client = redis_server.client()
    client.publish("gateway:events", json.dumps({"event": "nope", "to": {"user": "u1"},
                                                 "data": {"password": secret}}))
    client.publish("gateway:events", "{broken " + secret)
    for _ in range(50):
        lines = [r for r in node.log_records() if "dropped invalid event" in r.get("message", "")]
        if len(lines) >= 2:
            break
        await asyncio.sleep(0.1)
    messages = " ".join(r["message"] for r in lines)
    assert "unknown event 'nope'" in messages and "not valid JSON" in messages
    assert secret not in node.logs()


# -- delivery to sockets, two nodes ------------------------------------------------

def _unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}"


class Scene:
    """alice on both nodes (two devices), bob on node 1, carol on node 0; bob and carol share a chat."""

    def __init__(self, nodes, redis_server, via: str):
        self.nodes, self.via = nodes, via
        self.redis = redis_server.client()
        self.users = {name: _unique(name) for name in ("alice", "bob", "carol")}
        self.chat = _unique("chat")

    async def open(self) -> "Scene":
        users, nodes = self.users, self.nodes
        self.all = await open_sockets((nodes[0], make_token(users["alice"])),
                                      (nodes[1], make_token(users["alice"])),
                                      (nodes[1], make_token(users["bob"])),
                                      (nodes[0], make_token(users["carol"])))
        self.alice, self.bob, self.carol = self.all[:2], self.all[2], self.all[3]
        for sock in (self.bob, self.carol):
            ack = await sock.client.call("chat:join", {"chatId": self.chat}, timeout=5)
            assert ack["ok"], ack
        return self

    async def close(self) -> None:
        for sock in self.all:
            await sock.close()

    async def send(self, payload, expect: int = 202) -> None:
        """POST to node 0, or PUBLISH on the channel (where nothing answers)."""
        if self.via == "post":
            response = await post_event(self.nodes[0], payload)
            assert response.code == expect, response.body
        else:
            self.redis.publish("gateway:events", json.dumps(payload))

    async def settle(self) -> None:
        """A marker event to every user, awaited on every socket: all earlier events are in."""
        marker = _unique("settle")
        await self.send({"event": "presence:update", "to": {"users": list(self.users.values())},
                         "data": {"marker": marker}})
        for sock in self.all:
            await sock.wait_for("presence:update", marker)


@pytest.mark.parametrize("via", ["post", "publish"])
@pytest.mark.gen_test(timeout=30)
async def test_events_reach_each_targeted_socket_exactly_once(nodes, redis_server, via):
    scene = await Scene(nodes, redis_server, via).open()
    try:
        users = scene.users
        to_user, to_users, to_chat = _unique("user"), _unique("users"), _unique("chat")
        await scene.send({"event": "message:new", "to": {"user": users["alice"]},
                          "data": {"marker": to_user}})
        await scene.send({"event": "chat:updated", "to": {"users": [users["alice"], users["bob"]]},
                          "data": {"marker": to_users}})
        await scene.send({"event": "message:edit", "to": {"chat": scene.chat},
                          "data": {"marker": to_chat}})
        await scene.settle()
        for sock in scene.alice:  # one device on each node
            assert len(sock.got("message:new", to_user)) == 1
            assert len(sock.got("chat:updated", to_users)) == 1
            assert sock.got("message:edit", to_chat) == []
        assert len(scene.bob.got("chat:updated", to_users)) == 1
        assert len(scene.bob.got("message:edit", to_chat)) == 1
        assert len(scene.carol.got("message:edit", to_chat)) == 1
        assert scene.bob.got("message:new", to_user) == []
        assert scene.carol.got("message:new", to_user) == []
        assert scene.carol.got("chat:updated", to_users) == []
    finally:
        await scene.close()


@pytest.mark.parametrize("via", ["post", "publish"])
@pytest.mark.gen_test(timeout=30)
async def test_bad_events_deliver_nothing(nodes, redis_server, via):
    scene = await Scene(nodes, redis_server, via).open()
    try:
        alice, marker = scene.users["alice"], _unique("bad")
        for payload in (
            {"event": "message:send", "to": {"user": alice}, "data": {"marker": marker}},
            {"event": "message:new", "to": {"room": alice}, "data": {"marker": marker}},
            {"event": "message:new", "to": {"user": alice}, "data": {"marker": marker}, "x": 1},
        ):
            await scene.send(payload, expect=400)
        await scene.settle()
        for sock in scene.all:
            assert [d for _, d in sock.received if isinstance(d, dict) and d.get("marker") == marker] == []
    finally:
        await scene.close()


@pytest.mark.gen_test(timeout=40)
async def test_subscriber_survives_a_redis_restart(own_redis, start_gateway):
    node = start_gateway({**AUTH_ENV, "REDIS_URL": own_redis.url})
    user = _unique("restart")
    own_redis.kill()
    for _ in range(50):
        if node.get_json("/readyz")[0] == 503:
            break
        await asyncio.sleep(0.1)
    response = await post_event(node, {"event": "chat:updated", "to": {"user": user}, "data": {}})
    assert response.code == 503  # nothing was sent anywhere: the service must retry
    assert json.loads(response.body)["error"]["code"] == "REDIS_UNAVAILABLE"
    own_redis.start()
    for _ in range(100):
        status, ready = node.get_json("/readyz")
        if status == 200 and ready["checks"]["events"]["subscribed"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"not subscribed again: {ready}")
    sockets = await open_sockets((node, make_token(user)))
    try:
        own_redis.client().publish("gateway:events", json.dumps(
            {"event": "chat:updated", "to": {"user": user}, "data": {"marker": "back"}}))
        await sockets[0].wait_for("chat:updated", "back")
    finally:
        await sockets[0].close()
    # One line per transition, never one per retry. (redis-py may also re-subscribe by itself
    # inside one read, in which case the subscriber never saw the loss at all.)
    messages = [r.get("message", "") for r in node.log_records()]
    lost = sum("lost subscription to gateway:events" in m for m in messages)
    assert lost <= 1
    assert sum(m == "subscribed to gateway:events" for m in messages) == 1 + lost


@pytest.mark.gen_test
async def test_events_endpoint_takes_post_only(node):
    for method, body in (("GET", None), ("PUT", "{}")):
        response = await fetch(node, "/internal/events", method, body)
        assert response.code == 405, method
        assert json.loads(response.body)["error"]["code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.gen_test
async def test_digest_opaque_signed_with_the_librarys_default_key_is_refused(node):
    import base64
    import hashlib
    import os

    nonce = os.urandom(12).hex()
    key = f"{nonce},127.0.0.1,{int(time.time())}".encode()
    opaque = hashlib.md5(key + b"secret-random").hexdigest() + "-" + base64.b64encode(key).decode()
    forged = f'Digest realm="tornado_gateway internal", qop="auth", nonce="{nonce}", opaque="{opaque}"'
    response = await fetch(node, "/metrics", headers=digest_header(forged, "GET", "/metrics"),
                           auth=None)
    assert response.code == 401  # right password, but a challenge this node never issued
