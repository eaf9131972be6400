"""Operators see every socket come and go: connects, disconnects and refusals logged with user id and reason."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import socketio
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from chat_fakes import SocketClient
from harness import ORIGIN, make_token


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


@pytest.mark.gen_test(timeout=40)
async def test_every_socket_line_is_written_before_the_process_ends(start_gateway):
    """Socket lines are buffered per loop iteration, like access lines: the drain's disconnect
    lines, written just before the process exits, are all there."""
    gateway = start_gateway({"LOG_LEVEL": "info", "DRAIN_GRACE": "0", "DRAIN_TIMEOUT": "10",
                             "SOCKET_RATE_CONNECT": "1000/1", "MAX_CONNECTIONS_PER_IP": "0"})
    users = [f"exit-user-{n}" for n in range(40)]
    sockets = await asyncio.gather(*(_raw_socket(gateway, make_token(u)) for u in users))
    gateway.signal()
    assert gateway.wait(20) == 0
    records = [r for r in gateway.log_records() if r.get("logger") == "tornado_gateway.realtime"]
    for event in ("connect", "disconnect"):
        logged = {r.get("user_id") for r in records if r.get("event") == event}
        missing = [u for u in users if u not in logged]
        assert not missing, f"{len(missing)} {event} lines lost, e.g. {missing[:2]}"
    assert all(r.get("message") == "socket disconnected: draining"
               for r in records if r.get("event") == "disconnect")
    for socket in sockets:
        socket.close()


async def _raw_socket(gateway, token: str):
    """An authenticated Socket.IO websocket spoken by hand (nothing of a client library left
    running when the gateway goes away)."""
    socket = await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{gateway.port}/socket.io/?EIO=4&transport=websocket",
                                                 headers={"Origin": ORIGIN}))
    opened = await socket.read_message()
    assert isinstance(opened, str) and opened.startswith("0{"), opened
    socket.write_message("40" + json.dumps({"token": token}))
    connected = await socket.read_message()
    assert isinstance(connected, str) and connected.startswith("40{"), connected
    return socket


@pytest.mark.gen_test(timeout=30)
async def test_socket_lines_never_carry_a_secret_a_token_chose(start_gateway):
    """The user id comes from a token: one shaped like a credential, or equal to a configured
    secret, is redacted in the socket's lines as it was through ``logging``."""
    from harness import ACCESS_SECRET

    gateway = start_gateway({"LOG_LEVEL": "info"})
    for user in ("password=hunter2hunter2", ACCESS_SECRET):
        client = await SocketClient().connect(gateway, make_token(user))
        await client.close()
    await record(gateway, lambda r: r.get("event") == "disconnect" and "[redacted]" in r.get("user_id", "")
                 and r.get("user_id") != "password=[redacted]")
    logs = gateway.logs()
    assert "hunter2hunter2" not in logs and ACCESS_SECRET not in logs
    lines = [r for r in gateway.log_records() if r.get("event") in ("connect", "disconnect")]
    assert len(lines) == 4 and all("[redacted]" in r["user_id"] for r in lines), lines
