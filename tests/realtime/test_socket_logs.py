"""Operators see every socket come and go: connects, disconnects and refusals logged with user id and reason."""

from __future__ import annotations

import asyncio
import time

import pytest
import socketio

from chat_fakes import SocketClient
from harness import make_token


async def record(gateway, predicate, timeout: float = 5.0) -> dict:
    """The first log record matching ``predicate``, waiting for it to be written."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in gateway.log_records() if predicate(r)]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no such log record in {gateway.logs()[-3000:]}")
        await asyncio.sleep(0.05)


def message(text: str):
    return lambda r: r.get("message", "").startswith(text)


@pytest.mark.gen_test(timeout=30)
async def test_connect_and_disconnect_are_logged_with_the_user_and_the_reason(start_gateway):
    gateway = start_gateway({"AUTH_TIMEOUT": "1"})
    client = await SocketClient().connect(gateway, make_token("log-user-1"))
    line = await record(gateway, lambda r: message("socket connected (websocket)")(r)
                        and r.get("user_id") == "log-user-1")
    assert line["level"] == "info" and line["sid"] and line["client_ip"] == "127.0.0.1"
    await client.close()
    line = await record(gateway, lambda r: message("socket disconnected")(r) and r.get("user_id") == "log-user-1")
    assert line["message"] in ("socket disconnected: client disconnect", "socket disconnected: transport close")

    silent = await SocketClient().connect(gateway)  # no token: must send auth:hello within 1 s
    await record(gateway, message("socket connected (websocket), awaiting auth:hello"))
    await asyncio.wait_for(silent.disconnected.wait(), 5)
    await record(gateway, message("socket disconnected: no auth:hello within AUTH_TIMEOUT"))


@pytest.mark.gen_test(timeout=30)
async def test_refusals_are_logged_with_their_code_and_origin_refusals_say_so(start_gateway):
    gateway = start_gateway()
    client = SocketClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(gateway, "not-a-jwt")
    assert client.connect_error["data"]["code"] == "INVALID_TOKEN"
    line = await record(gateway, message("socket refused: INVALID_TOKEN"))
    assert line["code"] == "INVALID_TOKEN" and line["client_ip"] == "127.0.0.1"
    refused = {}
    for transports in (["websocket"], ["polling"]):
        client = SocketClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(gateway, make_token("o1"), headers={"Origin": "http://evil.test"},
                                 transports=transports)
        refused[transports[0]] = client.connect_error
    # websocket: the refusal arrives as Socket.IO's connect_error, naming it; polling: an HTTP 403
    assert refused["websocket"]["data"] == {"code": "ORIGIN_NOT_ALLOWED", "message": "origin not allowed"}
    await record(gateway, lambda r: len([x for x in gateway.log_records()
                                         if x.get("message", "").startswith("socket refused: origin not allowed")
                                         and "evil.test" in x["message"]]) >= 2)
    # a refused socket never counted as connected
    assert not [r for r in gateway.log_records() if r.get("message", "").startswith("socket connected")]
