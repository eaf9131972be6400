"""Batched Redis work: calls made in one loop iteration (or while a batch is in flight) go out
together (Batcher), and a script run over many keys in one EVALSHA, or one per master on a
Redis Cluster (KeyedScript). Why: docs/design-notes.md ("Connect storms")."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Generic, Sequence, TypeVar


from tornado_gateway.cluster.pipelined import Script
from tornado_gateway.cluster.redis_cluster import ShardScript

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """``await submit(item)`` runs ``run(items)`` over every item submitted in the same loop
    iteration, one batch in flight at a time: items submitted meanwhile wait for the next
    one, so under load batches grow and the per-command cost is shared. ``run`` returns one
    result per item, in order; when it raises, every item of the batch raises that."""

    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R]]]) -> None:
        self._run = run
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._sender: asyncio.Task | None = None

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((item, future))
        if self._sender is None and len(self._pending) == 1:
            loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        if self._sender is None and self._pending:
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._run([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._sender = None


class KeyedScript:
    """A Lua body over KEYS (one per item) and ARGV = shared args, then each key's args in key
    order; returns ``width`` values per key. Run with one EVALSHA on a single Redis, one per
    master on a cluster (ShardScript), loaded again when Redis forgot it."""

    def __init__(self, body: str, width: int = 1) -> None:
        self.width = width
        self.sharded = ShardScript(body, width)
        self.script = Script(body)

    async def run(self, link: Any, keys: Sequence[str], per_key_args: Sequence[Sequence[Any]] = (),
                  shared_args: Sequence[Any] = ()) -> list:
        if not keys:
            return []
        if link.cluster is not None:
            return await self.sharded(link.cluster, keys, per_key_args, shared_args)
        return await self.script.run(link, keys,
                                     [*shared_args, *(a for per_key in per_key_args for a in per_key)])
