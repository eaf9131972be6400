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


async def _stopped(task: asyncio.Future) -> None:
    """Cancel a subscription's loop and check that it ended by the cancellation."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


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
        await _stopped(task)
        await publisher.aclose()


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


class _Proxy:
    """A TCP proxy on loopback that can go silent: nothing forwarded either way, nothing
    closed (a peer gone without a word, as behind a dead router)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.silent = False
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [writer, up_writer]

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                if not self.silent:
                    sink.write(data)
            sink.close()
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0.05)  # the pumps see their ends


@pytest.mark.gen_test(timeout=30)
async def test_a_silent_peer_is_found_by_the_health_check_and_the_loop_subscribes_again(own_redis):
    proxy = _Proxy(own_redis.port)
    port = await proxy.start()
    received: list = []
    lost: list = []

    async def on_message(data) -> None:
        received.append(data)

    url = f"redis://127.0.0.1:{port}/0"
    subscription = Subscription("pin", lambda: connect(url, health_check_interval=0.2), on_message,
                                on_lost=lost.append, own_client=True)
    task = asyncio.ensure_future(subscription.run())
    publisher = aioredis.from_url(own_redis.url)
    try:
        await _until(lambda: subscription.subscribed)
        while await publisher.publish("pin", b"before") == 0:
            await asyncio.sleep(0.02)
        await _until(lambda: received == [b"before"])
        await asyncio.sleep(0.6)  # idle for three intervals: answered PINGs keep it
        assert lost == [] and subscription.subscribed
        proxy.silent = True
        await _until(lambda: lost)
        assert "PING" in str(lost[0])
        proxy.silent = False
        await _until(lambda: subscription.subscribed)
        while b"after" not in received:
            await publisher.publish("pin", b"after")
            await asyncio.sleep(0.05)
    finally:
        await _stopped(task)
        await publisher.aclose()
        await proxy.close()


@pytest.mark.gen_test(timeout=30)
async def test_the_health_check_passes_with_nothing_subscribed(own_redis):
    closed: list = []
    wire = await PubSubWire.open(connect(own_redis.url, health_check_interval=0.1, client_name="idle-pin"),
                                 lambda item: None, closed.append)
    try:
        await asyncio.sleep(0.6)  # PINGs answered with a plain PONG outside subscribed mode
        assert closed == [] and not wire.closed
        line = next(line for line in own_redis.client().execute_command("CLIENT", "LIST").splitlines()
                    if "name=idle-pin" in line)
        assert " cmd=ping " in f" {line} "
    finally:
        await wire.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_a_subscriber_that_falls_behind_stops_the_reading_and_loses_nothing(own_redis):
    release = asyncio.Event()
    received: list = []
    peak = 0

    async def on_message(data) -> None:
        nonlocal peak
        peak = max(peak, subscription._queued)
        await release.wait()
        received.append(data)

    subscription = Subscription("slow", lambda: connect(own_redis.url, client_name="slow-pin"), on_message,
                                own_client=True)
    subscription.QUEUE_HIGH = 64 * 1024
    task = asyncio.ensure_future(subscription.run())
    publisher = aioredis.from_url(own_redis.url)
    admin = own_redis.client()
    try:
        await _until(lambda: subscription.subscribed)
        while await publisher.publish("slow", b"0" * 4096) == 0:
            await asyncio.sleep(0.02)
        messages = [b"%04d" % i + b"." * 4092 for i in range(1, 3000)]  # 12 MB: more than the kernel buffers
        pipe = publisher.pipeline(transaction=False)
        for message in messages:
            pipe.publish("slow", message)
        await pipe.execute()

        def held_by_redis() -> int:
            line = next(line for line in admin.execute_command("CLIENT", "LIST").splitlines()
                        if "name=slow-pin" in line)
            return int(line.split(" omem=")[1].split()[0])
        await _until(lambda: held_by_redis() > 0)  # the rest waits in Redis, not in the gateway
        assert subscription._paused
        assert subscription._queued <= subscription.QUEUE_HIGH + 256 * 1024  # at most one read more
        release.set()
        await _until(lambda: len(received) == 3000)
        assert received[1:] == messages  # in order, none lost
        assert peak <= subscription.QUEUE_HIGH + 256 * 1024
    finally:
        await _stopped(task)
        await publisher.aclose()
