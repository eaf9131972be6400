"""Start-up: health endpoints and configuration errors of a real process."""

import json

import pytest
from tornado.httpclient import AsyncHTTPClient

from harness import run_gateway_cli


@pytest.mark.gen_test
async def test_healthz_is_ok_json_with_security_headers(gateway):
    response = await AsyncHTTPClient().fetch(gateway.url("/healthz"))
    assert response.code == 200
    assert json.loads(response.body) == {"status": "ok"}
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Server" not in response.headers


@pytest.mark.gen_test
async def test_readyz_in_memory_mode_is_ready(gateway):
    response = await AsyncHTTPClient().fetch(gateway.url("/readyz"))
    body = json.loads(response.body)
    assert response.code == 200
    assert body["checks"]["redis"] == {"ok": True, "mode": "memory"}


def test_unknown_flag_stops_with_one_line_and_exit_2():
    result = run_gateway_cli(["--no-such-option=1"])
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-option" in lines[0]
