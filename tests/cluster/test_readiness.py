"""Redis modes: single node in memory, and a configured Redis that goes away and comes back."""

import time

import pytest

from harness import make_token

AUTH = {"Authorization": f"Bearer {make_token('u-ready')}"}
# With internal credentials set, the only warning a healthy start can log is about Redis.
CREDENTIALS = {"INTERNAL_AUTH_USER": "ops", "INTERNAL_AUTH_PASSWORD": "ops-password-for-tests"}


def poll(fetch, predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    result = fetch()
    while not predicate(result):
        if time.monotonic() > deadline:
            raise AssertionError(f"still {result} after {timeout}s")
        time.sleep(0.1)
        result = fetch()
    return result


def warnings_of(process) -> list[dict]:
    return [r for r in process.log_records() if r.get("level") in ("warning", "error")
            and r.get("logger", "").startswith("tornado_gateway")]


@pytest.mark.parametrize("env", [{"REDIS_URL": "memory://"}, {"REDIS_URL": None, "REDIS_HOST": ""}],
                         ids=["memory-url", "empty-redis-host"])
def test_single_node_without_redis_is_announced_once_and_ready(start_gateway, env):
    process = start_gateway({**CREDENTIALS, **env})
    status, body = process.get_json("/readyz")
    assert status == 200
    assert body["checks"]["redis"] == {"ok": True, "mode": "memory"}
    warnings = warnings_of(process)
    assert len(warnings) == 1 and "single-node" in warnings[0]["message"], warnings


def test_redis_down_keeps_serving_turns_not_ready_and_recovers(start_gateway, own_redis, stubs):
    process = start_gateway({**CREDENTIALS, "REDIS_URL": own_redis.url})
    assert process.get_json("/readyz")[0] == 200
    assert warnings_of(process) == []

    own_redis.kill()
    status, body = poll(lambda: process.get_json("/readyz"),
                        lambda r: r[0] == 503 and not r[1]["checks"]["redis"]["ok"])
    assert body["status"] == "not_ready" and body["checks"]["redis"]["error"]
    # Still alive and still proxying while Redis is gone.
    assert process.get_json("/healthz") == (200, {"status": "ok"})
    status, echoed = process.get_json("/api/users/echo", headers=AUTH)
    assert status == 200 and echoed["uri"] == "/echo"
    time.sleep(2.5)  # a few watcher rounds with Redis still down

    own_redis.start()  # same port: the node reconnects by itself
    poll(lambda: process.get_json("/readyz"), lambda r: r[0] == 200)

    def redis_lines() -> list[str]:
        return [r.get("message", "") for r in process.log_records()
                if r.get("logger") == "tornado_gateway.redis"]
    # The recovery line is the marker (lines are flushed once per loop iteration, so it may
    # trail the first 200 by a moment); then each transition is logged once, however long
    # Redis stayed down.
    messages = poll(redis_lines, lambda lines: sum(m.startswith("redis reachable") for m in lines) >= 2)
    assert sum(m.startswith("redis lost") for m in messages) == 1, messages
    assert sum(m.startswith("redis reachable at redis://127.0.0.1:") for m in messages) == 2, messages
