"""cluster.batch: calls of one loop iteration run as one batch; a keyed script gives the same
answers on a single Redis and on a Redis Cluster, and survives Redis forgetting it."""

from __future__ import annotations

import asyncio
import time

import pytest

from tornado_gateway.cluster.batch import Batcher, KeyedScript
from tornado_gateway.cluster.redis_link import RedisLink

# KEYS counters; ARGV step, then each key's own addend. Per key: its new value.
ADD = KeyedScript("""
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('INCRBY', key, tonumber(ARGV[1]) + tonumber(ARGV[1 + i]))
  redis.call('EXPIRE', key, 60)
end
return out
""")


@pytest.mark.gen_test
async def test_calls_of_one_iteration_share_a_batch_and_later_ones_wait_for_the_next():
    runs: list[list[int]] = []
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        runs.append(items)
        if len(runs) == 1:
            await release.wait()  # the first batch stays in flight
        return [item * 10 for item in items]

    batcher: Batcher[int, int] = Batcher(run)
    first = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    while not runs:
        await asyncio.sleep(0)
    later = [asyncio.ensure_future(batcher.submit(i)) for i in (7, 8)]
    await asyncio.sleep(0.01)
    assert runs == [[0, 1, 2]]  # 7 and 8 wait while a batch is in flight
    release.set()
    assert await asyncio.gather(*first, *later) == [0, 10, 20, 70, 80]
    assert runs == [[0, 1, 2], [7, 8]]


@pytest.mark.gen_test
async def test_a_failed_batch_fails_each_of_its_calls_and_the_next_batch_runs():
    calls = 0

    async def run(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis went away")
        return items

    batcher: Batcher[str, str] = Batcher(run)
    results = await asyncio.gather(batcher.submit("a"), batcher.submit("b"), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    assert await batcher.submit("c") == "c"


async def _add_twice(url: str) -> tuple[list, list]:
    link = RedisLink(url)
    await link.start()
    try:
        # hash tags spread the keys over the masters of a cluster
        keys = [f"gw:test:{{k{i}-{time.time()}}}" for i in range(12)]
        first = await ADD.run(link, keys, [(i,) for i in range(12)], (100,))
        if link.cluster is None:
            await link.client.script_flush()
        else:
            for node in link.cluster.get_primaries():
                await link.cluster.execute_command("SCRIPT", "FLUSH", target_nodes=node)
        second = await ADD.run(link, keys, [(1,) for _ in keys], (0,))  # loaded again
        return first, second
    finally:
        await link.close()


@pytest.mark.gen_test(timeout=30)
async def test_keyed_script_answers_per_key_in_order_on_redis(redis_server):
    first, second = await _add_twice(redis_server.url)
    assert first == [100 + i for i in range(12)]
    assert second == [101 + i for i in range(12)]


@pytest.mark.gen_test(timeout=30)
async def test_keyed_script_answers_per_key_in_order_on_a_cluster(redis_cluster):
    first, second = await _add_twice(redis_cluster.url)
    assert first == [100 + i for i in range(12)]
    assert second == [101 + i for i in range(12)]
