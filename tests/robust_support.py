"""Shared parts of the robustness tests (issue 7): two nodes on one Redis, helpers, the JS client.

Everything is real: gateways are processes, Redis is a redis-server, clients
are python-socketio or the official socket.io-client (tests/js/robust.js).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import socketio
from tornado.httpclient import AsyncHTTPClient

from chat_fakes import ChatFakes, SocketClient, connected
from harness import ORIGIN, make_token, node_with_packages
from internal_client import AUTH_ENV

JS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js")

__all__ = ["ChatFakes", "SocketClient", "connected", "make_token", "ORIGIN", "AUTH_ENV", "uid",
           "join", "presence_of", "eventually", "run_js", "node_binary", "log_lines", "RawJSON",
           "raw_connected"]


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def join(client: SocketClient, chat: str) -> None:
    reply = await client.call("chat:join", {"chatId": chat})
    assert reply["ok"], reply


async def presence_of(gw, user: str) -> str:
    response = await AsyncHTTPClient().fetch(
        gw.url(f"/api/presence?userIds={user}"), raise_error=False,
        headers={"Authorization": f"Bearer {make_token('asker')}"})
    assert response.code == 200, response.body
    return json.loads(response.body)["presence"][0]["status"]


async def eventually(check, timeout: float = 6.0, step: float = 0.05):
    """Poll an async check until it returns something truthy (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(step)


def log_lines(gw, needle: str) -> list[str]:
    return [line for line in gw.logs().splitlines() if needle in line]


def node_binary() -> str:
    """``node`` with tests/js/node_modules installed (npm ci on first use); skips without node."""
    return node_with_packages(JS_DIR)


async def run_js(scenario: str, **options) -> dict:
    """Run a scenario of tests/js/robust.js (without blocking the test's loop)."""
    node = node_binary()
    proc = await asyncio.create_subprocess_exec(
        node, "robust.js", scenario, json.dumps({"origin": ORIGIN, **options}), cwd=JS_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
    assert lines, f"robust.js printed nothing: {stdout!r} {stderr!r}"
    out = json.loads(lines[-1])
    assert proc.returncode == 0 and "error" not in out, out
    return out


class RawJSON:
    """Text put into a packet as it is (JSON no encoder would write: 10,000 levels, NaN...)."""

    def __init__(self, text: str):
        self.text = text


class _RawAwareJSON:
    @staticmethod
    def dumps(value, **kwargs) -> str:
        raws: list[str] = []

        def swap(item):
            if isinstance(item, RawJSON):
                raws.append(item.text)
                return f"\x00RAW{len(raws) - 1}\x00"
            if isinstance(item, dict):
                return {k: swap(v) for k, v in item.items()}
            if isinstance(item, (list, tuple)):
                return [swap(v) for v in item]
            return item

        text = json.dumps(swap(value), **kwargs)
        for index, raw in enumerate(raws):
            text = text.replace(json.dumps(f"\x00RAW{index}\x00"), raw)
        return text

    loads = staticmethod(json.loads)


class _RawPacket(socketio.packet.Packet):
    json = _RawAwareJSON


async def raw_connected(gateway, user: str | None, **kwargs) -> SocketClient:
    """A SocketClient whose payloads may hold :class:`RawJSON` parts."""
    client = SocketClient(ack_message_new=kwargs.pop("ack_message_new", True))
    client.sio.packet_class = _RawPacket
    token = make_token(user) if user is not None else None
    return await client.connect(gateway, token, **kwargs)
