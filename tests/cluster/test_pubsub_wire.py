"""cluster.pubsub_wire against a real redis-server: which clients it stands in for, the items
it hands on (the same as redis-py's PubSub), credentials, and failures as connection loss."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tornado_gateway.cluster.pubsub_wire import PubSubWire
from tornado_gateway.cluster.redis_link import connect, connect_subscriber
from tornado_gateway.cluster.subscription import Subscription


async def _until(check, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def test_the_wire_stands_in_only_for_plain_resp2_clients():
    assert PubSubWire.fits(connect("redis://127.0.0.1:6399/0"))
    assert PubSubWire.fits(connect_subscriber("redis://127.0.0.1:6399/0"))
    assert PubSubWire.fits(connect("redis://127.0.0.1:6399/0", bounded_pool=True))
    assert PubSubWire.fits(connect("unix:///tmp/nowhere.sock"))
    assert not PubSubWire.fits(connect("rediss://127.0.0.1:6399/0"))  # TLS: redis-py's PubSub
    assert not PubSubWire.fits(connect("redis+sentinel://127.0.0.1:26399/0/mymaster"))
    assert not PubSubWire.fits(aioredis.Redis(port=6399, protocol=3))
    assert not PubSubWire.fits(aioredis.Redis(port=6399, decode_responses=True))
    assert not PubSubWire.fits(connect("redis+cluster://127.0.0.1:7000"))


async def _items_of(own_redis, read) -> list:
    """What ``read`` (one of the two readers) hands on for one script of events."""
    publisher = aioredis.from_url(own_redis.url)
    try:
        items = await read(publisher)
    finally:
        await publisher.aclose()
    return items


@pytest.mark.gen_test(timeout=30)
async def test_items_are_those_redis_py_hands_on(own_redis):
    async def script(subscriber) -> None:
        await subscriber.subscribe("a", "b")
        await subscriber.psubscribe("p*")

    async def events(publisher) -> None:
        assert await publisher.publish("a", b"one") == 1
        assert await publisher.publish("pq", "\u00e9".encode()) == 1
        assert await publisher.publish("b", b"") == 1

    async def with_wire(publisher) -> list:
        items: list = []
        closed: list = []
        wire = await PubSubWire.open(connect(own_redis.url), items.append, closed.append)
        await wire.subscribe("a", "b")
        wire._write(("PSUBSCRIBE", "p*"))
        await _until(lambda: len(items) == 3)
        await events(publisher)
        await _until(lambda: len(items) == 6)
        await wire.unsubscribe("a")
        await _until(lambda: len(items) == 7)
        await wire.aclose()
        assert len(closed) == 1 and wire.closed
        return items

    async def with_redis_py(publisher) -> list:
        client = connect(own_redis.url)
        pubsub = client.pubsub()
        await script(pubsub)
        items: list = []
        while len(items) < 3:
            item = await pubsub.get_message(timeout=1.0)
            if item is not None:
                items.append(item)
        await events(publisher)
        await pubsub.unsubscribe("a")
        while len(items) < 7:
            item = await pubsub.get_message(timeout=1.0)
            if item is not None:
                items.append(item)
        await pubsub.aclose()
        await client.aclose()
        return items

    ours, theirs = await _items_of(own_redis, with_wire), await _items_of(own_redis, with_redis_py)
    assert ours == theirs
    assert [item["type"] for item in ours] == ["subscribe", "subscribe", "psubscribe", "message", "pmessage",
                                               "message", "unsubscribe"]


@pytest.mark.gen_test(timeout=30)
async def test_credentials_client_name_and_database_are_sent_first(own_redis):
    admin = own_redis.client()
    admin.execute_command("ACL", "SETUSER", "gw", "on", ">s3cret", "~*", "&*", "+@all")
    url = f"redis://gw:s3cret@127.0.0.1:{own_redis.port}/3"
    wire = await PubSubWire.open(connect(url, client_name="wire-pin"), lambda item: None, lambda exc: None)
    try:
        await wire.subscribe("x")
        await _until(lambda: "name=wire-pin" in str(admin.execute_command("CLIENT", "LIST")))
        line = next(line for line in admin.execute_command("CLIENT", "LIST").splitlines() if "name=wire-pin" in line)
        assert " user=gw " in f" {line} " and " db=3 " in f" {line} " and " sub=1 " in f" {line} "
    finally:
        await wire.aclose()
    closed: list = []
    with pytest.raises(Exception) as refused:
        await PubSubWire.open(connect(f"redis://gw:wrong@127.0.0.1:{own_redis.port}/0"),
                              lambda item: None, closed.append)
    assert "refused" in str(refused.value) and "wrong" not in str(refused.value)
    assert len(closed) == 1  # the connection ended, once


@pytest.mark.gen_test(timeout=30)
async def test_a_failing_subscriber_is_a_lost_connection_and_the_loop_starts_over(own_redis):
    received: list = []
    lost: list = []

    async def on_message(data) -> None:
        if data == b"boom":
            raise ValueError("subscriber failed")
        received.append(data)

    subscription = Subscription("pin", lambda: connect(own_redis.url), on_message,
                                on_lost=lost.append, own_client=True)
    task = asyncio.ensure_future(subscription.run())
    publisher = aioredis.from_url(own_redis.url)
    try:
        await _until(lambda: subscription.subscribed)
        assert isinstance(subscription.pubsub, PubSubWire)
        await publisher.publish("pin", b"boom")
        await _until(lambda: lost)
        assert isinstance(lost[0], ValueError)
        await _until(lambda: subscription.subscribed)  # its SUBSCRIBE sent, maybe not yet done
        while await publisher.publish("pin", b"after") == 0:
            await asyncio.sleep(0.02)
        await _until(lambda: received == [b"after"])
    finally:
        task.cancel()
        await publisher.aclose()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.gen_test(timeout=30)
async def test_a_reply_no_pub_sub_connection_gets_closes_the_connection(own_redis):
    items: list = []
    closed: list = []
    wire = await PubSubWire.open(connect(own_redis.url), items.append, closed.append)
    await wire.subscribe("x")
    await _until(lambda: items)
    wire._write(("GET", "k"))  # refused in subscribed mode: an error reply, out of step
    await _until(lambda: closed)
    assert wire.closed and "unexpected reply" in str(closed[0])
    with pytest.raises(Exception):
        await wire.subscribe("y")
