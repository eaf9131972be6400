"""Redis Cluster support: ``redis+cluster://`` URLs, the cluster client, per-master scripts
and per-master pub/sub clients. Design: docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

SCHEMES = ("redis+cluster", "rediss+cluster")
CROSS_SLOT_FLAG = "#!lua flags=allow-cross-slot-keys\n"
NODE_OPTIONS = ("username", "password", "credential_provider", "client_name", "socket_timeout",
                "socket_connect_timeout", "socket_keepalive", "protocol")


def is_cluster_url(url: str | None) -> bool:
    return bool(url) and urlsplit(url).scheme in SCHEMES


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """(startup nodes, client keyword arguments) of a ``redis+cluster://`` URL; ValueError when bad."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError("a Redis Cluster URL starts with redis+cluster:// or rediss+cluster://")
    netloc = parts.netloc
    credentials, _, hosts = netloc.rpartition("@")
    nodes = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"cluster node {item.strip()!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("a Redis Cluster URL names at least one node (host:port)")
    kwargs: dict[str, Any] = {}
    if credentials:
        username, sep, password = credentials.partition(":")
        if sep:
            kwargs["password"] = unquote(password)
            if username:
                kwargs["username"] = unquote(username)
        else:
            kwargs["password"] = unquote(username)
    if parts.scheme == "rediss+cluster":
        kwargs["ssl"] = True
    for name, value in parse_qsl(parts.query):
        if name in ("socket_timeout", "socket_connect_timeout"):
            kwargs[name] = float(value)
        else:
            raise ValueError(f"unknown Redis Cluster URL option {name!r}")
    return nodes, kwargs


def connect_cluster(url: str, **options: Any) -> RedisCluster:
    """An asyncio cluster client for ``url``; ``options`` as for a plain client (no ``retry``)."""
    nodes, kwargs = parse_cluster_url(url)
    options = {k: v for k, v in options.items() if k not in ("retry", "health_check_interval")}
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                        **{**options, **kwargs})


def node_options(cluster: RedisCluster) -> dict[str, Any]:
    """Connection keyword arguments (password, TLS, timeouts) to reach one node of ``cluster`` directly."""
    kwargs = cluster.nodes_manager.connection_kwargs
    out = {k: v for k, v in kwargs.items() if k in NODE_OPTIONS or k.startswith("ssl_")}
    if "SSL" in getattr(kwargs.get("connection_class"), "__name__", ""):
        out["ssl"] = True
    return out


def keys_by_node(cluster: RedisCluster, keys: Sequence[str]) -> dict[str, list[int]]:
    """Indexes of ``keys`` grouped by the name of the master that owns each key's slot."""
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(owner(cluster, key).name, []).append(index)
    return groups


def owner(cluster: RedisCluster, key: str) -> ClusterNode:
    """The master that owns ``key``'s slot (LookupError while the slot has none)."""
    node = cluster.get_node_from_key(key)
    if node is None:
        raise LookupError(f"no master owns the slot of {key!r}")
    return node


# Rebinds KEYS and ARGV as the script body expects them, from ARGV = n, n keys, the rest.
SHARD_PRELUDE = """local n = tonumber(ARGV[1])
local KEYS, rest = {}, {}
for i = 1, n do KEYS[i] = ARGV[i + 1] end
for i = n + 2, #ARGV do rest[#rest + 1] = ARGV[i] end
local ARGV = rest
"""


class ShardScript:
    """A script written for declared KEYS, run once per master over the keys it owns.

    On each master the keys travel in ARGV (with the ``allow-cross-slot-keys``
    flag, so they may span slots of that master) and a prelude gives the body
    the KEYS and ARGV it expects: ``shared_args`` first, then the
    ``per_key_args`` of that master's keys in key order. Results are lists
    with one ``width``-long slice per key, put back in the caller's order.
    """

    def __init__(self, body: str, width: int = 1):
        self.source = CROSS_SLOT_FLAG + SHARD_PRELUDE + body
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.width = width

    async def __call__(self, cluster: RedisCluster, keys: Sequence[str],
                       per_key_args: Sequence[Sequence[Any]] = (), shared_args: Sequence[Any] = ()) -> list:
        if cluster._initialize:
            await cluster.initialize()
        out: list = [None] * (len(keys) * self.width)
        for attempt in (1, 2):
            try:
                groups = list(keys_by_node(cluster, keys).items())
                calls = []
                for name, indexes in groups:
                    args: list[Any] = [len(indexes), *(keys[i] for i in indexes), *shared_args]
                    for i in indexes:
                        args.extend(per_key_args[i] if per_key_args else ())
                    node = cluster.get_node(node_name=name)
                    if node is None:
                        raise LookupError(f"cluster node {name} is gone")
                    calls.append(self._run(cluster, node, args))
                for (_, indexes), flat in zip(groups, await asyncio.gather(*calls)):  # all in flight
                    for position, i in enumerate(indexes):
                        out[i * self.width:(i + 1) * self.width] = flat[position * self.width:
                                                                        (position + 1) * self.width]
                return out
            except ResponseError as exc:
                if attempt == 2 or "non local key" not in str(exc):
                    raise
                await cluster.nodes_manager.initialize()  # a slot moved: learn the new owners, retry
        return out

    async def _run(self, cluster: RedisCluster, node: ClusterNode, args: list[Any]) -> list:
        try:
            return await cluster.execute_command("EVALSHA", self.sha, 0, *args, target_nodes=node)
        except NoScriptError:  # a restarted shard forgot it
            await cluster.execute_command("SCRIPT", "LOAD", self.source, target_nodes=node)
            return await cluster.execute_command("EVALSHA", self.sha, 0, *args, target_nodes=node)


class MasterRotation:
    """Plain clients to the cluster's masters in turn, one per (re)connection attempt: a
    classic SUBSCRIBE on any master hears every PUBLISH, so a subscriber moves on when one fails."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self.attempt = 0

    def next_client(self) -> Redis:
        nodes = list(self.cluster.get_primaries()) or list(self.cluster.nodes_manager.startup_nodes.values())
        node = nodes[self.attempt % len(nodes)]
        self.attempt += 1
        return Redis(host=node.host, port=int(node.port), retry=Retry(NoBackoff(), 0),
                     **node_options(self.cluster))
