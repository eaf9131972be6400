"""The Redis Cluster the tests start, and the Redis behaviour the gateway's cluster mode relies on.

Pinned here against the real servers: sharded pub/sub exists (Redis >= 7) and
a shard channel lives on the master owning its hash slot; a classic PUBLISH
sent to any master reaches a subscriber on any other (how services'
``PUBLISH gateway:events`` keeps working on a cluster); a script's keys must
share one slot (why every gateway key is hash-tagged); a restarted shard comes
back on the same port owning the same slots.
"""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import MovedError

from redis_cluster import MIN_VERSION, redis_server_version


def test_installed_redis_has_sharded_pubsub():
    assert redis_server_version()[:2] >= MIN_VERSION


def _client(node) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)


def test_shard_channel_lives_on_the_slot_owner(redis_cluster):
    channel = "gw:r:{chat:pinned}"
    owner = redis_cluster.node_of(channel)
    other = next(node for node in redis_cluster.nodes if node is not owner)
    sub = _client(owner).pubsub()
    sub.ssubscribe(channel)
    assert sub.get_message(timeout=5)["type"] == "ssubscribe"
    with pytest.raises(MovedError) as moved:
        _client(other).spublish(channel, "wrong shard")
    assert str(moved.value).endswith(owner.address)
    assert _client(owner).spublish(channel, "hello") == 1
    message = sub.get_message(timeout=5)
    assert message["type"] == "smessage" and message["data"] == b"hello"
    sub.close()


def test_classic_publish_reaches_subscribers_on_every_master(redis_cluster):
    first, *others = redis_cluster.nodes
    subs = []
    for node in others:
        sub = _client(node).pubsub()
        sub.subscribe("gateway:events")
        assert sub.get_message(timeout=5)["type"] == "subscribe"
        subs.append(sub)
    _client(first).publish("gateway:events", "from-a-service")
    for sub in subs:
        assert sub.get_message(timeout=5)["data"] == b"from-a-service"
        sub.close()


def test_script_keys_must_share_a_slot(redis_cluster):
    client = redis_cluster.client()
    with pytest.raises(Exception, match="slot"):
        client.eval("return 1", 2, "gw:rl:{user:a}", "gw:rl:{user:b}")
    assert client.eval("return #KEYS", 2, "gw:rl:{s}:a", "gw:rl:{s}:b") == 2


def test_restarted_shard_owns_its_slots_again(own_redis_cluster):
    cluster = own_redis_cluster
    key = "gw:probe:{restart}"
    owner = cluster.node_of(key)
    client = cluster.client()
    client.set(key, "before")
    cluster.restart(owner)
    assert cluster.node_of(key) is owner
    assert client.get(key) is None  # no persistence: the data went with the process
    client.set(key, "after")
    assert client.get(key) == "after"
