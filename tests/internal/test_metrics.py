"""``GET /metrics``: Prometheus text of this process, figures that move with traffic."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis
from tornado.httpclient import AsyncHTTPClient

from harness import RedisServer, make_token
from internal_client import fetch, metric_value, open_sockets, post_event, running_nodes


@pytest.fixture(scope="module")
def metrics_redis():
    """A redis-server of this module: rate-limit buckets of other modules' nodes (same client
    IP, other limits) must not count here."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(metrics_redis, stub_upstreams):
    for started in running_nodes(metrics_redis, stub_upstreams, {"RATE_LIMIT_IP": "3/60"}, count=1):
        yield started[0]


@pytest.mark.gen_test
async def test_metrics_is_prometheus_text_with_every_family(node):
    response = await fetch(node, "/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.body.decode()
    for family in ("gateway_http_requests_total", "gateway_http_request_duration_seconds",
                   "gateway_upstream_duration_seconds", "gateway_upstream_errors_total",
                   "gateway_circuit_open", "gateway_open_sockets", "gateway_events_in_total",
                   "gateway_events_out_total", "gateway_rate_limited_total",
                   "gateway_redis_reconnects_total", "gateway_rate_limit_local_fallback"):
        assert f"# TYPE {family}" in text, family


@pytest.mark.gen_test
async def test_request_and_event_counters_move_with_traffic(node, metrics_redis):
    before_ready = await metric_value(node, "gateway_http_requests_total", route="ready",
                                      method="GET", status="200")
    before_events = await metric_value(node, "gateway_events_in_total", event="presence:update",
                                       source="http")
    before_channel = await metric_value(node, "gateway_events_in_total", event="presence:update",
                                        source="redis")
    before_rejected = await metric_value(node, "gateway_events_rejected_total", source="http")
    for _ in range(3):
        assert (await AsyncHTTPClient().fetch(node.url("/readyz"))).code == 200
    event = {"event": "presence:update", "to": {"user": "u-metrics"},
             "data": {"userId": "u2", "status": "online"}}
    listener = aioredis.Redis.from_url(metrics_redis.url).pubsub()
    await listener.subscribe("gw:room:{user:u-metrics}")  # the user's room channel
    assert (await post_event(node, event)).code == 202
    assert (await post_event(node, {"event": "bogus"})).code == 400
    assert await metric_value(node, "gateway_http_requests_total", route="ready", method="GET",
                              status="200") == before_ready + 3
    assert await metric_value(node, "gateway_events_in_total", event="presence:update",
                              source="http") == before_events + 1
    assert await metric_value(node, "gateway_events_rejected_total",
                              source="http") == before_rejected + 1
    # the accepted event was published on the target room's channel (room-scoped, SPEC §6)
    published = None
    for _ in range(50):
        published = await listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if published is not None:
            break
    await listener.aclose()
    assert published is not None and json.loads(published["data"])["data"] == event["data"]
    # an event a service PUBLISHes on gateway:events is counted as received from Redis
    await aioredis.Redis.from_url(metrics_redis.url).publish("gateway:events", json.dumps(event))
    for _ in range(50):
        if await metric_value(node, "gateway_events_in_total", event="presence:update",
                              source="redis") == before_channel + 1:
            break
        await asyncio.sleep(0.05)
    assert await metric_value(node, "gateway_events_in_total", event="presence:update",
                              source="redis") == before_channel + 1


@pytest.mark.gen_test(timeout=20)
async def test_proxy_refusal_socket_and_event_out_metrics_move(node):
    ok_before = await metric_value(node, "gateway_http_requests_total", route="auth", method="GET",
                                   status="200")
    refused_before = await metric_value(node, "gateway_rate_limited_total", scope="ip")
    for _ in range(5):  # RATE_LIMIT_IP is 3/60 on this node
        await AsyncHTTPClient().fetch(node.url("/api/auth/session"), raise_error=False)
    assert await metric_value(node, "gateway_http_requests_total", route="auth", method="GET",
                              status="200") == ok_before + 3
    assert await metric_value(node, "gateway_http_requests_total", route="auth", method="GET",
                              status="429") >= 2
    assert await metric_value(node, "gateway_rate_limited_total", scope="ip") == refused_before + 2
    assert await metric_value(node, "gateway_upstream_duration_seconds_count", upstream="auth") >= 3

    user = f"u-metrics-{time.time_ns()}"
    sockets = await open_sockets((node, make_token(user)))
    try:
        assert await metric_value(node, "gateway_open_sockets") >= 1
        out_before = await metric_value(node, "gateway_events_out_total", event="receipt:read")
        await post_event(node, {"event": "receipt:read", "to": {"user": user},
                                "data": {"marker": "m"}})
        await sockets[0].wait_for("receipt:read", "m")
        assert await metric_value(node, "gateway_events_out_total",
                                  event="receipt:read") == out_before + 1
    finally:
        for sock in sockets:
            await sock.close()
