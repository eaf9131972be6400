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

from harness import REFRESH_SECRET, make_token
from internal_client import running_nodes
from tornado_gateway.config import RateLimit
from tornado_gateway.cluster.limits import LocalLimiter, Limits
from tornado_gateway.cluster.redis_link import RedisLink


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
        assert own_redis.client().exists("gw:rl:{ip:b}") == 1
    finally:
        await _close(links)


# -- over HTTP, through two gateway nodes ------------------------------------------

LIMIT_ENV = {"RATE_LIMIT_IP": "10/60", "RATE_LIMIT_AUTH": "3/60", "RATE_LIMIT_USER": "6/60",
             "TRUSTED_PROXIES": "127.0.0.1"}
_ip_counter = iter(range(1, 250))


def fresh_ip() -> str:
    """A client address of its own (the nodes trust X-Forwarded-For from loopback)."""
    return f"198.51.100.{next(_ip_counter)}"


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams, LIMIT_ENV)


async def get(node, path, ip, token=None):
    headers = {"X-Forwarded-For": ip}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return await AsyncHTTPClient().fetch(node.url(path), headers=headers, raise_error=False)


@pytest.mark.gen_test(timeout=20)
async def test_burst_split_across_two_nodes_is_limited_as_one(nodes):
    ip = fresh_ip()
    responses = await asyncio.gather(*(get(nodes[i % 2], "/api/auth/session", ip)
                                       for i in range(30)))
    # Each node got 15 and would pass 10 on its own (20 in all): 10 in all is one shared limit.
    # Which node served them depends on whose batch reached Redis first (both, or one alone).
    assert sum(r.code == 200 for r in responses) == 10
    assert sum(r.code == 429 for r in responses) == 20


@pytest.mark.gen_test
async def test_rate_limit_headers_and_429_json_with_retry_after(nodes, stubs):
    ip = fresh_ip()
    first = await get(nodes[0], "/api/auth/session", ip)
    assert first.code == 200
    assert first.headers["RateLimit-Policy"] == '"ip";q=10;w=60'
    assert first.headers["RateLimit"] == '"ip";r=9;t=6'
    for _ in range(9):
        assert (await get(nodes[1], "/api/auth/session", ip)).code == 200
    seen_upstream = len(stubs.received("auth"))
    refused = await get(nodes[0], "/api/auth/session", ip)
    assert refused.code == 429
    assert refused.headers["Content-Type"].startswith("application/json")
    error = json.loads(refused.body)["error"]
    assert error["code"] == "RATE_LIMITED" and "ip: 10 per 60s" in error["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 6
    assert refused.headers["RateLimit"].startswith('"ip";r=0;')
    assert len(stubs.received("auth")) == seen_upstream  # the upstream never saw it


@pytest.mark.gen_test
async def test_auth_paths_have_a_stricter_class_than_other_requests(nodes):
    ip = fresh_ip()
    codes = [(await get(nodes[i % 2], "/api/auth/login", ip)).code for i in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert (await get(nodes[0], "/api/auth/register", ip)).code == 429
    for disguised in ("/api/auth/LOGIN", "/api/auth/x/../login", "/api//auth/login/"):
        response = await get(nodes[1], disguised, ip)
        assert response.code in (400, 429), disguised  # refused, never a fresh bucket
    refresh = make_token("u-refresh", secret=REFRESH_SECRET, type="refresh")
    refused = await get(nodes[1], "/api/auth/refresh", ip, refresh)
    assert refused.code == 429 and refused.headers["RateLimit-Policy"] == '"auth";q=3;w=60'
    # The same client is still well within its general IP class elsewhere.
    other = await get(nodes[1], "/api/auth/session", ip)
    assert other.code == 200 and other.headers["RateLimit-Policy"] == '"ip";q=10;w=60'


@pytest.mark.gen_test
async def test_authenticated_requests_are_limited_per_user_not_per_ip(nodes):
    alice = make_token(f"alice-{time.time()}")
    bob = make_token(f"bob-{time.time()}")
    codes = [(await get(nodes[i % 2], "/api/users/me", fresh_ip(), alice)).code for i in range(7)]
    assert codes == [200] * 6 + [429]  # six addresses, one user, one bucket of 6
    answer = await get(nodes[0], "/api/users/me", fresh_ip(), bob)
    assert answer.code == 200 and answer.headers["RateLimit"] == '"user";r=5;t=10'


@pytest.mark.gen_test(timeout=40)
async def test_redis_killed_limits_locally_then_shared_again(own_redis, start_gateway, stub_upstreams):
    env = {**LIMIT_ENV, "REDIS_URL": own_redis.url, "RATE_LIMIT_IP": "4/60"}
    node_a, node_b = start_gateway(env), start_gateway(env)
    own_redis.kill()
    ip = fresh_ip()
    codes = [(await get(node_a, "/api/auth/session", ip)).code for _ in range(6)]
    assert codes == [200] * 4 + [429, 429]  # still limited, by this node alone
    status, ready = node_a.get_json("/readyz")
    assert status == 503 and ready["checks"]["limits"]["mode"] == "local-fallback"
    assert any("limiting locally" in r.get("message", "") for r in node_a.log_records())

    own_redis.start()
    for _ in range(60):
        if all(n.get_json("/readyz")[0] == 200 for n in (node_a, node_b)):
            break
        await asyncio.sleep(0.1)
    ip = fresh_ip()
    responses = await asyncio.gather(*(get((node_a, node_b)[i % 2], "/api/auth/session", ip)
                                       for i in range(10)))
    assert sum(r.code == 200 for r in responses) == 4  # one shared limit again
    assert node_a.get_json("/readyz")[1]["checks"]["limits"]["mode"] == "redis"
    assert any("limits are shared" in r.get("message", "") for r in node_a.log_records())
