"""Token revocation: stored in Redis with a TTL, known to every node, enforced on HTTP and sockets."""

from __future__ import annotations

import asyncio
import time

import pytest

from tornado_gateway.auth import Identity
from tornado_gateway.redis_link import RedisLink
from tornado_gateway.revocation import Revocations


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
