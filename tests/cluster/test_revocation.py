"""Token revocation: stored in Redis with a TTL, known to every node, enforced on HTTP and sockets."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from harness import GatewayProcess, make_token
from internal_client import open_sockets, post_event, running_nodes
from tornado_gateway.edge.identity import Identity
from tornado_gateway.cluster.redis_link import RedisLink
from tornado_gateway.cluster.revocation import Revocations


def identity(user_id="u1", jti=None, iat=None) -> Identity:
    return Identity(user_id=user_id, token="t", expires_at=time.time() + 600, issued_at=iat, jti=jti)


@pytest.mark.gen_test
async def test_revocations_stored_in_redis_with_ttl_are_loaded_by_another_node(redis_server):
    link_a, link_b = RedisLink(redis_server.url), RedisLink(redis_server.url)
    await link_a.start()
    await link_b.start()
    try:
        user = f"user-{time.time()}"
        node_a = Revocations(link_a, ttl=3600)
        await node_a.start()
        now = time.time()
        await node_a.store(user, jti=f"jti-{user}", exp=now + 120)
        await node_a.store(user, before=now)
        await node_a.store(user, before=now - 100)  # an older "before" never lowers it
        client = redis_server.client()
        assert 0 < client.ttl(f"gw:revoked:jti:jti-{user}") <= 121  # until the token's exp
        assert 3500 < client.ttl(f"gw:revoked:user:{user}") <= 3600  # REVOCATION_TTL
        assert float(client.get(f"gw:revoked:user:{user}")) == pytest.approx(now)

        node_b = Revocations(link_b, ttl=3600)
        await node_b.start()
        assert await node_b.is_revoked(identity(user, jti=f"jti-{user}", iat=now + 10))
        assert await node_b.is_revoked(identity(user, jti="other", iat=now - 1))
        assert await node_b.is_revoked(identity(user, jti="other", iat=None))
        assert not await node_b.is_revoked(identity(user, jti="other", iat=now + 1))
        assert not await node_b.is_revoked(identity("someone-else", jti="x", iat=now - 1))
    finally:
        await link_a.close()
        await link_b.close()


@pytest.mark.gen_test
async def test_memory_mode_revocations_apply_locally():
    revocations = Revocations(None)
    await revocations.start()
    revocations.apply("u9", jti="j9")
    revocations.apply("u8", before=1000.0)
    assert await revocations.is_revoked(identity("u9", jti="j9", iat=5000))
    assert not await revocations.is_revoked(identity("u9", jti="j10", iat=5000))
    assert await revocations.is_revoked(identity("u8", iat=999))
    assert not await revocations.is_revoked(identity("u8", iat=1000))


# -- end to end: two gateway nodes -------------------------------------------------

@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams)


async def api_status(node, token) -> tuple[int, dict]:
    response = await AsyncHTTPClient().fetch(node.url("/api/users/me"), raise_error=False,
                                             headers={"Authorization": f"Bearer {token}"})
    return response.code, json.loads(response.body) if response.body else {}


async def eventually_revoked(node, token) -> dict:
    for _ in range(50):
        code, body = await api_status(node, token)
        if code == 401:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("token still accepted")


@pytest.mark.gen_test
async def test_revoking_a_jti_over_http_refuses_that_token_on_every_node(nodes):
    user = f"u-jti-{time.time()}"
    doomed, kept = make_token(user, jti=f"{user}-a"), make_token(user, jti=f"{user}-b")
    assert (await api_status(nodes[1], doomed))[0] == 200
    response = await post_event(nodes[0], {"type": "session:revoke", "userId": user,
                                           "jti": f"{user}-a"})
    assert response.code == 202
    for node in nodes:
        body = await eventually_revoked(node, doomed)
        assert body["error"]["code"] == "TOKEN_REVOKED"
        assert (await api_status(node, kept))[0] == 200


@pytest.mark.gen_test
async def test_revoking_before_by_publish_only_is_stored_and_enforced(nodes, redis_server):
    user = f"u-before-{time.time()}"
    old = make_token(user, iat=int(time.time()) - 60)
    client = redis_server.client()
    client.publish("gateway:events", json.dumps({"type": "session:revoke", "userId": user,
                                                 "before": time.time() - 30}))
    for node in nodes:
        assert (await eventually_revoked(node, old))["error"]["code"] == "TOKEN_REVOKED"
    assert (await api_status(nodes[0], make_token(user)))[0] == 200  # issued after: fine
    assert client.exists(f"gw:revoked:user:{user}") == 1  # stored although only published


@pytest.mark.gen_test(timeout=20)
async def test_a_node_started_later_loads_stored_revocations(nodes, stub_upstreams, redis_server):
    user = f"u-late-{time.time()}"
    token = make_token(user, jti=f"{user}-j")
    assert (await post_event(nodes[0], {"type": "session:revoke", "userId": user,
                                        "jti": f"{user}-j"})).code == 202
    await eventually_revoked(nodes[0], token)
    late = GatewayProcess({**stub_upstreams.env(), "REDIS_URL": redis_server.url}).start()
    try:
        code, body = await api_status(late, token)
        assert code == 401 and body["error"]["code"] == "TOKEN_REVOKED"
    finally:
        late.stop()


@pytest.mark.gen_test(timeout=30)
async def test_revoking_a_jti_disconnects_its_sockets_on_both_nodes_only(nodes):
    user = f"u-sock-{time.time_ns()}"
    doomed, kept = make_token(user, jti=f"{user}-a"), make_token(user, jti=f"{user}-b")
    sockets = await open_sockets((nodes[0], doomed), (nodes[1], doomed), (nodes[1], kept))
    try:
        response = await post_event(nodes[1], {"type": "session:revoke", "userId": user,
                                               "jti": f"{user}-a"})
        assert response.code == 202
        for sock in sockets[:2]:
            await asyncio.wait_for(sock.disconnected.wait(), 5)
            assert [e["code"] for e in sock.got("error")] == ["TOKEN_REVOKED"]
        survivor = sockets[2]
        assert survivor.client.connected and survivor.got("error") == []
        await post_event(nodes[0], {"event": "chat:updated", "to": {"user": user},
                                    "data": {"marker": "still-here"}})
        await survivor.wait_for("chat:updated", "still-here")
        for node in nodes:
            code, body = await api_status(node, doomed)
            assert code == 401 and body["error"]["code"] == "TOKEN_REVOKED"
    finally:
        for sock in sockets:
            await sock.close()


@pytest.mark.gen_test(timeout=30)
async def test_revoking_before_by_publish_disconnects_old_sessions_on_both_nodes(nodes, redis_server):
    user = f"u-sock-before-{time.time_ns()}"
    old = make_token(user, iat=int(time.time()) - 120)
    sockets = await open_sockets((nodes[0], old), (nodes[1], old))
    try:
        redis_server.client().publish("gateway:events", json.dumps(
            {"type": "session:revoke", "userId": user, "before": time.time() - 60}))
        for sock in sockets:
            await asyncio.wait_for(sock.disconnected.wait(), 5)
            assert [e["code"] for e in sock.got("error")] == ["TOKEN_REVOKED"]
        for node in nodes:
            assert (await api_status(node, old))[0] == 401
    finally:
        for sock in sockets:
            await sock.close()
