"""THE pub/sub reconnect loop against a real redis-server: delivery, loss, recovery."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tornado_gateway.cluster.pubsub_wire import PubSubWire
from tornado_gateway.cluster.redis_link import connect
from tornado_gateway.cluster.subscription import Subscription


async def _until(check, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.mark.gen_test(timeout=30)
async def test_subscription_delivers_survives_a_redis_restart_and_reports_each_transition(own_redis):
    received: list = []
    events: list[str] = []

    async def on_message(data) -> None:
        received.append(data)

    async def on_subscribed() -> None:
        events.append("subscribed")

    subscription = Subscription("pin", lambda: connect(own_redis.url), on_message,
                                on_subscribed=on_subscribed,
                                on_lost=lambda exc: events.append("lost"), own_client=True)
    task = asyncio.ensure_future(subscription.run())
    publisher = aioredis.from_url(own_redis.url)
    try:
        await _until(lambda: subscription.subscribed)
        assert isinstance(subscription.pubsub, PubSubWire)  # a plain client: the wire of our own
        await publisher.publish("pin", b"one")
        await _until(lambda: received == [b"one"])
        own_redis.kill()
        await _until(lambda: "lost" in events)
        assert subscription.subscribed is False
        own_redis.start()
        await _until(lambda: events.count("subscribed") == 2)
        await publisher.aclose()
        publisher = aioredis.from_url(own_redis.url)
        await publisher.publish("pin", b"two")
        await _until(lambda: received == [b"one", b"two"])
        assert events[0] == "subscribed" and events[-1] == "subscribed"
        assert events.count("subscribed") == 2  # once per (re)subscription
    finally:
        task.cancel()
        await publisher.aclose()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert subscription.subscribed is False
