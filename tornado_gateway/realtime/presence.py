"""Presence: who is online across all nodes, heartbeated so a dead node's users go offline.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import asyncio
import logging
import time


from tornado_gateway.cluster.batch import Batcher, KeyedScript
from tornado_gateway.codec import JSONRefused, loads
from tornado_gateway.realtime.payloads import iso_time
from tornado_gateway.parts import GatewayParts

log = logging.getLogger("tornado_gateway.presence")
PREFIX = "gw:presence:"
NODES_KEY = PREFIX + "{nodes}"


def user_key(user_id: str, part: str) -> str:
    """A user's presence keys (claims, seen, chats) share the hash tag ``{u:<userId>}``."""
    return PREFIX + "{u:" + user_id + "}:" + part


def node_key(node: str) -> str:
    return PREFIX + "{node:" + node + "}"
SEEN_TTL = 30 * 86400
CHATS_TTL = 7 * 86400

# The heartbeat's claim. KEYS[1] user claims; ARGV node, claim expiry, now, key ttl (ms). 1 = was offline.
CLAIM_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if before == 0 then return 1 end
return 0
"""

# The batched forms (cluster.batch.KeyedScript: one EVALSHA for the sockets of a loop
# iteration). A user's keys share its hash tag, so the keys in ARGV live on its shard.
# KEYS claims; ARGV node, claim expiry, now, key ttl (ms), then each user's chats key.
# Per user: 0 (already online elsewhere) or its joined chats as a JSON array (it was offline).
CLAIMS = KeyedScript("""
local node, expiry, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local before = redis.call('ZCARD', key)
  redis.call('ZADD', key, expiry, node)
  redis.call('PEXPIRE', key, ttl)
  out[i] = 0
  if before == 0 then
    local chats = redis.call('SMEMBERS', ARGV[4 + i])
    out[i] = #chats == 0 and '[]' or cjson.encode(chats)
  end
end
return out
""")
# KEYS claims; ARGV now, seen ttl, then per user: node, seen key, chats key, last seen text.
# Per user: 0 (still claimed elsewhere) or, now offline, its joined chats (the set is deleted).
RELEASES = KeyedScript("""
local now, seen_ttl = ARGV[1], ARGV[2]
local out = {}
for i, key in ipairs(KEYS) do
  local at = 4 * i - 1
  redis.call('ZREM', key, ARGV[at])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  out[i] = 0
  if redis.call('ZCARD', key) == 0 then
    redis.call('DEL', key)
    redis.call('SET', ARGV[at + 1], ARGV[at + 3], 'EX', seen_ttl)
    local chats = redis.call('SMEMBERS', ARGV[at + 2])
    redis.call('DEL', ARGV[at + 2])
    out[i] = #chats == 0 and '[]' or cjson.encode(chats)
  end
end
return out
""")
# KEYS chats sets; ARGV ttl, then each key's chat id. Per key: 1 when the chat was added.
JOINS = KeyedScript("""
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('SADD', key, ARGV[1 + i])
  redis.call('EXPIRE', key, ARGV[1])
end
return out
""")


class Presence:
    """This node's share of presence, and the cluster-wide view."""

    def __init__(self, gateway: GatewayParts,
                 announce: Callable[[str, str, str | None, list[str]], Awaitable[None]]) -> None:
        self.gateway = gateway
        self.redis = gateway.redis
        self.node = gateway.node_id
        self.ttl = gateway.settings.presence_ttl
        self.announce = announce  # async fn(user_id, status, last_seen, chat_ids)
        self.sockets: dict[str, int] = {}  # user -> authenticated sockets on this node
        self.chats: dict[str, set[str]] = {}  # user -> chats joined by this node's sockets
        self.seen: dict[str, str] = {}  # memory mode: user -> last seen
        self._task: asyncio.Task | None = None
        self._claim = None
        self._beat = asyncio.Lock()
        self._rebuild: asyncio.Future | None = None
        self._epoch: str | None = None  # the Redis data epoch of the last heartbeat
        # Claims, releases and joins of one loop iteration: one script call each (a storm of
        # connects costs a round trip per batch, not three per socket)
        self._claims: Batcher[str, list[str] | None] = Batcher(self._claim_batch)
        self._releases: Batcher[tuple[str, str, str], list[str] | None] = Batcher(self._release_batch)
        self._joins: Batcher[tuple[str, str], int] = Batcher(self._join_batch)
        if self.redis is not None:
            self._claim = self.redis.client.register_script(CLAIM_SCRIPT)
            self.redis.on_wiped(self._wiped)

    @property
    def interval(self) -> float:
        return self.ttl / 5

    def start(self) -> None:
        if self.redis is not None:
            self._task = asyncio.ensure_future(self._heartbeat_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _redis_usable(self) -> bool:
        return self.redis is not None and self.redis.up

    # -- sockets coming and going ------------------------------------------

    async def socket_online(self, user_id: str) -> None:
        count = self.sockets.get(user_id, 0) + 1
        self.sockets[user_id] = count
        if count > 1:
            return
        became_online, chats = True, None
        if self._redis_usable():
            try:
                chats = await self._claims.submit(user_id)
                became_online = chats is not None
            except Exception as exc:
                self._failed(exc)
        if became_online:
            joined = self._with_local(user_id, chats) if chats is not None else await self.joined_chats(user_id)
            await self.announce(user_id, "online", None, joined)

    async def socket_offline(self, user_id: str) -> None:
        count = self.sockets.get(user_id, 0) - 1
        if count > 0:
            self.sockets[user_id] = count
            return
        self.sockets.pop(user_id, None)
        await self._release_user(user_id, self.node)

    async def chat_joined(self, user_id: str, chat_id: str) -> bool:
        """Record the join; True when it is the user's first socket (on any node) in that chat."""
        local = self.chats.setdefault(user_id, set())
        first = chat_id not in local
        local.add(chat_id)
        if self._redis_usable():
            try:
                return await self._joins.submit((user_id, chat_id)) == 1
            except Exception as exc:
                self._failed(exc)
        return first

    async def joined_chats(self, user_id: str) -> list[str]:
        chats = set(self.chats.get(user_id, ()))
        if self._redis_usable():
            try:
                chats.update(c.decode() for c in await self.redis.client.smembers(user_key(user_id, "chats")))
            except Exception as exc:
                self._failed(exc)
        return sorted(chats)

    async def _release_user(self, user_id: str, node: str) -> None:
        last_seen = iso_time()
        went_offline = self.sockets.get(user_id, 0) == 0 or node != self.node
        released = None  # the user's joined chats in Redis, taken by the release
        if self._redis_usable():
            try:
                released = await self._releases.submit((user_id, node, last_seen))
                went_offline = released is not None
            except Exception as exc:
                self._failed(exc)
        if not went_offline:
            if node == self.node and user_id not in self.sockets:
                self.chats.pop(user_id, None)  # the user's other sockets are elsewhere
            log.debug("presence: %s still online elsewhere", user_id, extra={"user_id": user_id})
            return
        if released is not None:
            chats = self._with_local(user_id, released)
        else:
            chats = await self.joined_chats(user_id)
            if self._redis_usable():
                try:
                    await self.redis.client.delete(user_key(user_id, "chats"))
                except Exception as exc:
                    self._failed(exc)
        self.seen[user_id] = last_seen
        self.chats.pop(user_id, None)
        await self.announce(user_id, "offline", last_seen, chats)

    def _with_local(self, user_id: str, chats: list[str]) -> list[str]:
        local = self.chats.get(user_id)
        return sorted(local.union(chats) if local else set(chats))

    # -- the batches (Batcher): one script call, one node-set update each ----------

    async def _claim_batch(self, users: list[str]) -> list[list[str] | None]:
        now = time.time()
        # The node's user set is written beside the claims, not after them: one wait, not two
        added = asyncio.ensure_future(self.redis.execute("SADD", node_key(self.node), *users))
        try:
            replies = await CLAIMS.run(self.redis, [user_key(u, "claims") for u in users],
                                       [(user_key(u, "chats"),) for u in users],
                                       (self.node, now + self.ttl / 2, now, int(self.ttl * 2000)))
        finally:
            await added
        return [_chat_list(reply) for reply in replies]

    async def _release_batch(self, items: list[tuple[str, str, str]]) -> list[list[str] | None]:
        own = [u for u, node, _ in items if node == self.node]
        removed = asyncio.ensure_future(self.redis.execute("SREM", node_key(self.node), *own)) if own else None
        try:
            replies = await RELEASES.run(
                self.redis, [user_key(u, "claims") for u, _, _ in items],
                [(node, user_key(u, "seen"), user_key(u, "chats"), seen) for u, node, seen in items],
                (time.time(), SEEN_TTL))
        finally:
            if removed is not None:
                await removed
        return [_chat_list(reply) for reply in replies]

    async def _join_batch(self, items: list[tuple[str, str]]) -> list[int]:
        return await JOINS.run(self.redis, [user_key(u, "chats") for u, _ in items],
                               [(chat,) for _, chat in items], (CHATS_TTL,))

    # -- heartbeat and sweep -----------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                if self._redis_usable():
                    await self.heartbeat()
                    await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
            await asyncio.sleep(self.interval)

    def _wiped(self) -> None:
        """Redis lost its data: rebuild this node's share now rather than at the next beat."""
        if self._task is not None:
            self._rebuild = asyncio.ensure_future(self._beat_now())  # kept: the loop holds weak refs

    async def _beat_now(self) -> None:
        try:
            await self.heartbeat()
        except Exception as exc:
            self._failed(exc)

    async def heartbeat(self) -> None:
        """Renew this node's claims; a claim found missing after a false sweep re-announces
        ``online``, one missing because Redis lost its data is rebuilt silently (with the
        user's joined chats)."""
        async with self._beat:
            await self.redis.check_epoch()
            epoch = self.redis.epoch
            rebuilding = self._epoch is not None and epoch != self._epoch
            self._epoch = epoch
            await self._renew(rebuilding)

    async def _renew(self, rebuilding: bool) -> None:
        now = time.time()
        client = self.redis.client
        users = list(self.sockets)
        pipe = client.pipeline(transaction=False)
        pipe.zadd(NODES_KEY, {self.node: now + self.ttl / 2})
        pipe.pexpire(NODES_KEY, int(self.ttl * 4000))
        own_key = node_key(self.node)
        if users:
            pipe.sadd(own_key, *users)
        pipe.pexpire(own_key, int(self.ttl * 4000))
        if rebuilding:
            for user_id in users:
                chats = self.chats.get(user_id)
                if chats:
                    pipe.sadd(user_key(user_id, "chats"), *chats)
                    pipe.expire(user_key(user_id, "chats"), CHATS_TTL)
        if users and self.redis.cluster is not None:
            await client.script_load(CLAIM_SCRIPT)  # on every master: a restarted shard forgot it
        elif users:
            pipe.scripts.add(self._claim)  # the pipeline loads it when Redis forgot it
        for user_id in users:  # queued in the pipeline, on a cluster pipeline too
            pipe.evalsha(self._claim.sha, 1, user_key(user_id, "claims"),
                         self.node, now + self.ttl / 2, now, int(self.ttl * 2000))
        results = await pipe.execute()
        if rebuilding:
            log.info("presence: rebuilt %d user claim(s) of this node after redis lost its data",
                     len(users))
            return
        for user_id, became_online in zip(users, results[-len(users):] if users else ()):
            if became_online == 1 and user_id in self.sockets:
                await self.announce(user_id, "online", None, await self.joined_chats(user_id))

    async def sweep(self) -> None:
        client = self.redis.client
        dead = await client.zrangebyscore(NODES_KEY, "-inf", time.time())
        for raw in dead:
            node = raw.decode()
            if node == self.node or not await client.zrem(NODES_KEY, node):
                continue  # ourselves (late heartbeat) or another node took it
            users = [u.decode() for u in await client.smembers(node_key(node))]
            log.warning("presence: node %s stopped heartbeating; withdrawing its %d user(s)", node, len(users))
            await asyncio.gather(*(self._release_user(user_id, node) for user_id in users))  # batched
            await client.delete(node_key(node))

    async def withdraw_all(self) -> None:
        """Drain: this node's users go offline unless they have sockets elsewhere."""
        users = list(self.sockets)
        self.sockets.clear()
        await asyncio.gather(*(self._release_user(user_id, self.node) for user_id in users))  # batched
        if self._redis_usable():
            try:
                await self.redis.client.zrem(NODES_KEY, self.node)
                await self.redis.client.delete(node_key(self.node))
            except Exception as exc:
                self._failed(exc)

    # -- queries --------------------------------------------------------------

    async def status(self, user_ids: list[str]) -> list[dict]:
        now = time.time()
        if self._redis_usable():
            try:
                pipe = self.redis.client.pipeline(transaction=False)
                for user_id in user_ids:
                    pipe.zcount(user_key(user_id, "claims"), now, "+inf")
                    pipe.get(user_key(user_id, "seen"))
                results = await pipe.execute()
                out = []
                for i, user_id in enumerate(user_ids):
                    online = results[2 * i] > 0 or user_id in self.sockets
                    seen = results[2 * i + 1]
                    out.append(_entry(user_id, online, seen.decode() if seen else None))
                return out
            except Exception as exc:
                self._failed(exc)
        return [_entry(u, u in self.sockets, self.seen.get(u)) for u in user_ids]

    def _failed(self, exc: Exception) -> None:
        log.warning("presence: redis call failed, using this node's view: %s", exc)
        if self.redis is not None:
            self.redis.note_failure(exc)


def _chat_list(reply: object) -> list[str] | None:
    """A batch script's answer for one user: None for 0, else the JSON array of chat ids."""
    if not isinstance(reply, (bytes, str)):
        return None  # 0
    try:
        chats = loads(reply)
    except JSONRefused:
        chats = None
    return [c for c in chats if isinstance(c, str)] if isinstance(chats, list) else []


def _entry(user_id: str, online: bool, last_seen: str | None) -> dict:
    entry = {"userId": user_id, "status": "online" if online else "offline"}
    if not online and last_seen:
        entry["lastSeen"] = last_seen
    return entry
