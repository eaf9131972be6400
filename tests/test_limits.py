"""Rate limits: one limit for all nodes through Redis, a local fallback while Redis is down.

The limiter is exercised both directly (two ``Limits`` on one real
redis-server stand for two nodes) and over HTTP through two real gateway
processes.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from harness import GatewayProcess, make_token
from tornado_gateway.config import RateLimit
from tornado_gateway.limits import LocalLimiter, Limits
from tornado_gateway.redis_link import RedisLink


# -- the limiter itself ----------------------------------------------------------

def test_local_gcra_allows_a_burst_of_count_then_spaces_requests():
    now = [1000.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    limit = RateLimit(5, 10)  # one slot every 2 s
    decisions = [limiter.allow("k", limit) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    refused = decisions[5]
    assert refused.retry_after == pytest.approx(2.0) and refused.reset == pytest.approx(10.0)
    now[0] += 2.0
    assert limiter.allow("k", limit).allowed
    assert not limiter.allow("k", limit).allowed
    assert limiter.allow("other-key", limit).allowed


async def _links(url: str, count: int) -> list[RedisLink]:
    links = [RedisLink(url) for _ in range(count)]
    for link in links:
        await link.start()
    return links


async def _close(links) -> None:
    for link in links:
        await link.close()


@pytest.mark.gen_test
async def test_two_nodes_share_one_limit_through_redis(redis_server):
    links = await _links(redis_server.url, 2)
    try:
        node_a, node_b = Limits(links[0]), Limits(links[1])
        limit = RateLimit(10, 60)
        key = f"shared-{time.time()}"
        decisions = await asyncio.gather(*(
            (node_a if i % 2 else node_b).allow("ip", key, limit) for i in range(30)))
        assert sum(d.allowed for d in decisions) == 10
        assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))
        refused = [d for d in decisions if not d.allowed]
        assert all(0 < d.retry_after <= 6.01 and d.limit == 10 for d in refused)
        assert node_a.readiness()["mode"] == "redis"
    finally:
        await _close(links)


@pytest.mark.gen_test(timeout=20)
async def test_redis_down_falls_back_to_local_limits_and_back(own_redis):
    links = await _links(own_redis.url, 1)
    try:
        limits = Limits(links[0])
        limit = RateLimit(3, 60)
        assert (await limits.allow("ip", "a", limit)).allowed
        own_redis.kill()
        local = [await limits.allow("ip", "b", limit) for _ in range(4)]
        assert [d.allowed for d in local] == [True, True, True, False]
        assert limits.readiness()["mode"] == "local-fallback"
        own_redis.start()
        for _ in range(50):
            if links[0].up:
                break
            await asyncio.sleep(0.1)
        shared = await limits.allow("ip", "b", limit)
        assert shared.allowed  # Redis never saw key "b": a fresh shared bucket
        assert limits.readiness()["mode"] == "redis"
        assert own_redis.client().exists("gw:rl:ip:b") == 1
    finally:
        await _close(links)
