"""cluster.pipelined: one multiplexed connection to a real redis-server — replies in order,
errors as redis-py raises them, scripts reloaded, a dead or hung Redis fails fast and the
next command reconnects; and RedisLink uses it only where it can."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tornado_gateway.cluster.pipelined import PipelinedRedis, Script
from tornado_gateway.cluster.redis_link import RedisLink

ECHO_KEYS = Script("return {KEYS[1], ARGV[1], #KEYS}")


@pytest.mark.gen_test(timeout=30)
async def test_many_commands_in_flight_get_their_own_replies(redis_server):
    redis = PipelinedRedis(redis_server.url)
    try:
        key = f"gw:test:pipelined:{os.getpid()}"
        await redis.execute("DEL", key)
        replies = await asyncio.gather(*(redis.execute("RPUSH", key, str(i)) for i in range(500)))
        assert sorted(replies) == list(range(1, 501))
        # written in the order they were issued, on one connection
        assert await redis.execute("LRANGE", key, 0, -1) == [str(i).encode() for i in range(500)]
        assert await redis.execute("GET", key + ":missing") is None
        assert await redis.execute("DEL", key) == 1
    finally:
        redis.close()


@pytest.mark.gen_test(timeout=30)
async def test_an_error_reply_fails_only_its_command(redis_server):
    redis = PipelinedRedis(redis_server.url)
    try:
        key = f"gw:test:pipelined-err:{os.getpid()}"
        await redis.execute("SET", key, "text")
        results = await asyncio.gather(redis.execute("INCR", key), redis.execute("GET", key),
                                       redis.execute("NOSUCHCOMMAND"), redis.execute("PING"),
                                       return_exceptions=True)
        assert isinstance(results[0], ResponseError)
        assert results[1] == b"text"
        assert isinstance(results[2], ResponseError)
        assert results[3] == b"PONG"
        with pytest.raises(NoScriptError):
            await redis.execute("EVALSHA", "0" * 40, 0)
        with pytest.raises(ResponseError):  # not a Redis value: refused before anything is sent
            await redis.execute("SET", key, None)
        assert await redis.execute("GET", key) == b"text"  # the connection is still in step
    finally:
        redis.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_script_redis_forgot_is_loaded_again(redis_server):
    redis = PipelinedRedis(redis_server.url)
    try:
        assert await ECHO_KEYS(redis, ["k1", "k2"], ["a1"]) == [b"k1", b"a1", 2]
        await redis.execute("SCRIPT", "FLUSH")
        assert await ECHO_KEYS(redis, ["k3"], ["a3"]) == [b"k3", b"a3", 1]
    finally:
        redis.close()


@pytest.mark.gen_test(timeout=30)
async def test_killed_redis_fails_fast_and_the_next_command_reconnects(own_redis):
    redis = PipelinedRedis(own_redis.url)
    try:
        assert await redis.execute("SET", "gw:test:a", "1") == b"OK"
        own_redis.kill()
        with pytest.raises(RedisConnectionError):
            await redis.execute("GET", "gw:test:a")
        own_redis.start()  # same port, empty
        assert await redis.execute("GET", "gw:test:a") is None
        assert await redis.execute("PING") == b"PONG"
    finally:
        redis.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_hung_redis_times_out_every_waiter_then_recovers(own_redis):
    redis = PipelinedRedis(own_redis.url, command_timeout=0.5)
    try:
        assert await redis.execute("PING") == b"PONG"
        assert own_redis.proc is not None
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            results = await asyncio.gather(*(redis.execute("PING") for _ in range(3)),
                                           return_exceptions=True)
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        assert [type(r) for r in results] == [RedisTimeoutError] * 3
        assert await redis.execute("PING") == b"PONG"
    finally:
        redis.close()


@pytest.mark.gen_test(timeout=30)
async def test_password_and_database_of_the_url_are_used(own_redis):
    setup = PipelinedRedis(own_redis.url)
    try:
        await setup.execute("CONFIG", "SET", "requirepass", "s3cret")
    finally:
        setup.close()
    url = f"redis://:s3cret@127.0.0.1:{own_redis.port}/3"
    redis = PipelinedRedis(url)
    try:
        assert await redis.execute("SET", "gw:test:db", "three") == b"OK"
        info = (await redis.execute("CLIENT", "INFO")).decode()
        assert " db=3 " in info
    finally:
        redis.close()
    wrong = PipelinedRedis(f"redis://:nope@127.0.0.1:{own_redis.port}/0")
    try:
        with pytest.raises(RedisConnectionError):  # AuthenticationError: an outage, not a bad command
            await wrong.execute("PING")
    finally:
        wrong.close()


def test_only_plain_urls_get_a_pipelined_connection():
    assert PipelinedRedis.for_url("redis://127.0.0.1:6390/0") is not None
    assert PipelinedRedis.for_url("unix:///tmp/redis.sock") is not None
    assert PipelinedRedis.for_url("rediss://127.0.0.1:6390/0") is None
    assert PipelinedRedis.for_url("redis+sentinel://127.0.0.1:26379/mymaster") is None
    assert RedisLink("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").fast is None
    assert RedisLink("redis://127.0.0.1:6390/0").fast is not None


@pytest.mark.gen_test(timeout=30)
async def test_execute_many_writes_together_answers_in_order_and_raises_the_first_failure(redis_server):
    redis = PipelinedRedis(redis_server.url)
    link = RedisLink(redis_server.url)
    try:
        key = f"gw:test:pipelined-many:{os.getpid()}"
        await redis.execute("DEL", key)
        assert await redis.execute_many([("RPUSH", key, "a"), ("RPUSH", key, "b"), ("LRANGE", key, 0, -1)]) \
            == [1, 2, [b"a", b"b"]]
        with pytest.raises(ResponseError):
            await redis.execute_many([("INCR", key), ("RPUSH", key, "c"), ("NOSUCHCOMMAND",)])
        assert await redis.execute("LRANGE", key, 0, -1) == [b"a", b"b", b"c"]  # all were sent, in step
        # the link's two ways (pipelined connection, redis-py pipeline) answer alike
        assert link.fast is not None
        fast = await link.execute_many([("RPUSH", key, "d"), ("LLEN", key)])
        fast_link, link.fast = link.fast, None
        try:
            assert await link.execute_many([("RPUSH", key, "e"), ("LLEN", key)]) == [5, 5]
        finally:
            link.fast = fast_link
        assert fast == [4, 4]
    finally:
        redis.close()
        await redis.execute("DEL", key)
        redis.close()
        await link.close()
