"""The node's pub/sub subscriptions against real servers: one Redis, and a real 3-master Redis Cluster.

Batched SUBSCRIBE, "live" only once Redis confirmed, unsubscribe after the
last drop, want/drop/want ending subscribed, re-subscription after a Redis
(or one shard's) restart, sharded subscriptions on the slot owner.
"""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
import redis.asyncio as aioredis

from tornado_gateway.cluster.redis_cluster import connect_cluster
from tornado_gateway.cluster.redis_link import connect
from tornado_gateway.cluster.channels import ChannelSubscriptions, room_channel


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


class Inbox:
    """Collects what a ChannelSubscriptions received; ``wait_for`` a given payload."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()

    def __call__(self, channel: str, data: bytes) -> None:
        self.items.append((channel, data))
        self.arrived.set()

    async def published_until_heard(self, publish, channel: str, timeout: float = 20.0) -> None:
        """Publish numbered messages until one arrives (pub/sub loses what a reconnect window swallows)."""
        deadline = asyncio.get_running_loop().time() + timeout
        attempt = 0
        while True:
            attempt += 1
            payload = b"probe-%d" % attempt
            try:
                await publish(channel, payload)
            except Exception:
                pass
            try:
                await self.wait_for(payload, timeout=0.3)
                return
            except asyncio.TimeoutError:
                if asyncio.get_running_loop().time() > deadline:
                    raise

    async def wait_for(self, data: bytes, timeout: float = 5.0) -> None:
        async def until() -> None:
            while not any(d == data for _, d in self.items):
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(until(), timeout)

    def count(self, data: bytes) -> int:
        return sum(1 for _, d in self.items if d == data)


def _subscribe_calls(client) -> int:
    stats = client.info("commandstats")
    return stats.get("cmdstat_subscribe", {}).get("calls", 0)


def test_room_channel_names_are_hash_tagged():
    assert room_channel("chat:c1") == "gw:room:{chat:c1}"
    assert room_channel("user:u1") == "gw:room:{user:u1}"
    assert room_channel("sid-abc") is None and room_channel(None) is None


@pytest.mark.gen_test(timeout=30)
async def test_a_burst_of_wants_is_one_subscribe_and_live_means_confirmed(redis_server):
    inbox = Inbox()
    subs = ChannelSubscriptions(inbox, connect=lambda: aioredis.Redis.from_url(redis_server.url))
    await subs.start()
    sync = redis_server.client()
    try:
        before = _subscribe_calls(sync)
        names = [room_channel(uid("chat:c")) for _ in range(5)]
        for name in names:
            subs.want(name)
        assert not subs.is_live(names[0])  # nothing confirmed yet
        assert all(await asyncio.gather(*(subs.live(n, 5) for n in names)))
        assert _subscribe_calls(sync) - before == 1  # one SUBSCRIBE carried all five
        publisher = aioredis.Redis.from_url(redis_server.url)
        assert await publisher.publish(names[3], b"right-after-live") == 1
        await inbox.wait_for(b"right-after-live")
        assert subs.counts()["chat"] == 5
        await publisher.aclose()
    finally:
        await subs.close()


@pytest.mark.gen_test(timeout=30)
async def test_live_answers_false_when_unconfirmed_dropped_or_cancelled_and_leaves_no_waiter(own_redis):
    """``live`` waits on one loop timer: False once it fires, False at once on drop, nothing left behind."""
    own_redis.stop()  # nothing listens: no subscription is ever confirmed
    subs = ChannelSubscriptions(Inbox(), connect=lambda: aioredis.Redis.from_url(own_redis.url))
    await subs.start()
    try:
        late, dropped, cancelled = (room_channel(uid("chat:c")) for _ in range(3))
        for name in (late, dropped, cancelled):
            subs.want(name)
        assert await subs.live(late, 0.2) is False
        assert subs._find(late).waiters == []
        waiting = asyncio.ensure_future(subs.live(dropped, 60))
        await asyncio.sleep(0)
        subs.drop(dropped)
        assert await waiting is False  # the drop answered, long before the 60 s timer
        gone = asyncio.ensure_future(subs.live(cancelled, 60))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert all(w.done() for w, _ in subs._find(cancelled).waiters)
        assert await subs.live(uid("never-wanted"), 60) is False
    finally:
        await subs.close()


@pytest.mark.gen_test(timeout=30)
async def test_drop_unsubscribes_and_want_drop_want_ends_subscribed_once(redis_server):
    inbox = Inbox()
    subs = ChannelSubscriptions(inbox, connect=lambda: aioredis.Redis.from_url(redis_server.url))
    await subs.start()
    publisher = aioredis.Redis.from_url(redis_server.url)
    try:
        gone, flapping, marker = (room_channel(uid("chat:x")) for _ in range(3))
        for name in (gone, flapping, marker):
            subs.want(name)
        assert await subs.live(gone, 5) and await subs.live(flapping, 5) and await subs.live(marker, 5)
        subs.drop(gone)
        subs.drop(flapping)
        await asyncio.sleep(0)  # the unsubscribe goes out ...
        subs.want(flapping)  # ... and the channel is wanted again before it is confirmed
        assert await subs.live(flapping, 5)
        for _ in range(50):
            if (await publisher.pubsub_numsub(gone))[0][1] == 0:
                break
            await asyncio.sleep(0.05)
        assert (await publisher.pubsub_numsub(gone))[0][1] == 0
        assert (await publisher.pubsub_numsub(flapping))[0][1] == 1
        await publisher.publish(gone, b"not-for-us")
        await publisher.publish(flapping, b"once")
        await publisher.publish(marker, b"marker")
        await inbox.wait_for(b"marker")
        assert inbox.count(b"once") == 1 and inbox.count(b"not-for-us") == 0
        assert not subs.is_live(gone)
    finally:
        await publisher.aclose()
        await subs.close()


@pytest.mark.gen_test(timeout=60)
async def test_subscriptions_come_back_after_a_redis_restart(own_redis):
    inbox = Inbox()
    subs = ChannelSubscriptions(inbox, connect=lambda: aioredis.Redis.from_url(
        own_redis.url, socket_timeout=2, socket_connect_timeout=1))
    await subs.start()
    try:
        name = room_channel(uid("user:u"))
        subs.want(name)
        assert await subs.live(name, 5)
        own_redis.restart()
        publisher = aioredis.Redis.from_url(own_redis.url)
        await inbox.published_until_heard(publisher.publish, name)
        assert subs.is_live(name)
        await publisher.aclose()
    finally:
        await subs.close()


@pytest.mark.gen_test(timeout=90)
async def test_cluster_channels_are_sharded_on_their_owner_and_survive_a_shard_restart(own_redis_cluster):
    cluster_nodes = own_redis_cluster
    cluster = connect_cluster(cluster_nodes.url, socket_timeout=2.0, socket_connect_timeout=1.0)
    await cluster.initialize()
    inbox = Inbox()
    subs = ChannelSubscriptions(inbox, cluster=cluster)
    await subs.start()
    try:
        names = [room_channel(f"chat:{uid('c')}") for _ in range(12)]
        for name in names:
            subs.want(name)
        assert all(await asyncio.gather(*(subs.live(n, 5) for n in names)))
        owners = {name: cluster_nodes.node_of(name) for name in names}
        assert len({node.port for node in owners.values()}) > 1  # spread over several shards
        for name, node in owners.items():
            reply = node.cli("PUBSUB", "SHARDNUMSUB", name).split()
            assert reply == [name, "1"], (name, reply)
        for i, name in enumerate(names):
            assert await cluster.spublish(name, f"m{i}") == 1
        for i in range(len(names)):
            await inbox.wait_for(f"m{i}".encode())
        # one shard restarts: its channels come back by themselves, the others never left
        victim = owners[names[0]]
        cluster_nodes.restart(victim)
        await inbox.published_until_heard(cluster.spublish, names[0])
        others = [n for n in names if owners[n] is not victim]
        assert await cluster.spublish(others[0], "still-here") == 1
        await inbox.wait_for(b"still-here")
        info = victim.cli("INFO", "commandstats")
        assert re.search(r"cmdstat_ssubscribe:calls=\d+", info)
    finally:
        await subs.close()
        await cluster.aclose()


@pytest.mark.gen_test(timeout=90)
async def test_a_channel_follows_its_slot_to_another_master(own_redis_cluster):
    nodes = own_redis_cluster
    cluster = connect_cluster(nodes.url, socket_timeout=2.0, socket_connect_timeout=1.0)
    await cluster.initialize()
    inbox = Inbox()
    subs = ChannelSubscriptions(inbox, cluster=cluster)
    await subs.start()
    try:
        name = room_channel(f"chat:{uid('moving')}")
        subs.want(name)
        assert await subs.live(name, 5)
        source = nodes.node_of(name)
        target = next(node for node in nodes.nodes if node is not source)
        slot = source.cli("CLUSTER", "KEYSLOT", name).strip()
        source_id, target_id = source.cli("CLUSTER", "MYID").strip(), target.cli("CLUSTER", "MYID").strip()
        # an empty slot moves at once: Redis drops its shard subscriptions on the old owner
        assert target.cli("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id).strip() == "OK"
        assert source.cli("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id).strip() == "OK"
        for node in (target, source, *(n for n in nodes.nodes if n not in (source, target))):
            assert node.cli("CLUSTER", "SETSLOT", slot, "NODE", target_id).strip() == "OK"
        await inbox.published_until_heard(cluster.spublish, name)
        assert nodes.node_of(name) is target
        assert target.cli("PUBSUB", "SHARDNUMSUB", name).split() == [name, "1"]
    finally:
        await subs.close()
        await cluster.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_cluster_subscribers_speak_the_protocol_of_the_shared_client(redis_cluster):
    # the per-master pub/sub clients are built from the cluster client's options: RESP2 as
    # the gateway's clients (redis_link.CLIENT_OPTIONS), not redis-py's own default
    client = uid("resp")  # the per-master clients carry it: only this test's connections are checked
    cluster = connect(redis_cluster.url, client_name=client)
    await cluster.initialize()
    subs = ChannelSubscriptions(Inbox(), cluster=cluster)
    await subs.start()
    try:
        names = [room_channel(f"chat:{uid('p')}") for _ in range(6)]
        for name in names:
            subs.want(name)
        assert all(await asyncio.gather(*(subs.live(n, 5) for n in names)))
        for node in {node.port: node for node in map(redis_cluster.node_of, names)}.values():
            subscribers = [line for line in node.cli("CLIENT", "LIST").splitlines()
                           if f" name={client} " in f" {line} " and re.search(r"\bssub=[1-9]", line)]
            assert subscribers, node.port
            assert all(" resp=2 " in f" {line} " for line in subscribers), subscribers
    finally:
        await subs.close()
        await cluster.aclose()
