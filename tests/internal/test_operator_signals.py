"""What an operator reads: process_* and build metrics, quiet polling at info, the Redis host in its log line."""

from __future__ import annotations

import re

import pytest
from tornado.httpclient import AsyncHTTPClient

from harness import ORIGIN, make_token
from internal_client import AUTH_ENV, fetch
from tornado_gateway import __version__

AUTH = {"Authorization": f"Bearer {make_token('u-ops')}"}


@pytest.mark.gen_test(timeout=30)
async def test_metrics_carry_process_figures_and_the_build(start_gateway):
    gateway = start_gateway(AUTH_ENV)
    text = (await fetch(gateway, "/metrics")).body.decode()
    rss = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
    assert rss and float(rss.group(1)) > 1e6
    assert re.search(r"^process_cpu_seconds_total \S+$", text, re.M)
    assert re.search(r"^process_open_fds \S+$", text, re.M)
    build = re.search(r"^gateway_build_info\{(.*)\} 1\.0$", text, re.M)
    assert build and f'version="{__version__}"' in build.group(1) and 'python="3.' in build.group(1)


@pytest.mark.gen_test(timeout=30)
async def test_scrapes_and_polling_are_logged_at_debug_not_info(start_gateway):
    async def traffic(gateway) -> None:
        client = AsyncHTTPClient(force_instance=True)
        assert (await fetch(gateway, "/metrics")).code == 200
        poll = await client.fetch(gateway.url("/socket.io/?EIO=4&transport=polling"), headers={"Origin": ORIGIN})
        assert poll.code == 200
        # the marker: a proxied request's access line comes after both
        assert (await client.fetch(gateway.url("/api/users/ops-marker"), headers=AUTH)).code == 200
        client.close()

    def access(gateway, path: str) -> list[dict]:
        return [r for r in gateway.log_records() if r.get("logger") == "tornado_gateway.access"
                and r.get("path") == path]

    for level, quiet in (("info", True), ("debug", False)):
        gateway = start_gateway({**AUTH_ENV, "LOG_LEVEL": level})
        await traffic(gateway)
        for _ in range(100):
            if access(gateway, "/api/users/ops-marker"):
                break
            import asyncio
            await asyncio.sleep(0.05)
        assert access(gateway, "/api/users/ops-marker")
        for path in ("/metrics", "/socket.io/"):
            lines = access(gateway, path)
            assert (not lines) if quiet else (lines and all(r["level"] == "debug" for r in lines)), (level, path)


def test_the_redis_line_names_the_host_it_reached(start_gateway, redis_server):
    gateway = start_gateway({"REDIS_URL": redis_server.url})
    assert gateway.get_json("/readyz")[0] == 200
    lines = [r["message"] for r in gateway.log_records() if r.get("message", "").startswith("redis reachable")]
    assert lines == [f"redis reachable at redis://127.0.0.1:{redis_server.port}"]
