"""Forged, unsigned, wrong-key and expired tokens are refused over a real socket (SPEC §3, §5),
in the handshake (``auth: {token}`` or a Bearer header) and in ``auth:hello``; none of them,
and no secret, is ever written to the log."""

from __future__ import annotations

import asyncio
import time

import pytest
import socketio

from chat_fakes import SocketClient
from forged_tokens import FORGED
from harness import ACCESS_SECRET, REFRESH_SECRET, GatewayProcess, make_token

EXPECTED = {kind: "TOKEN_EXPIRED" if kind == "expired" else "INVALID_TOKEN" for kind in FORGED}


@pytest.fixture(scope="module")
def gw(stub_upstreams):
    process = GatewayProcess({**stub_upstreams.env(), "LOG_LEVEL": "info"}).start()
    yield process
    process.stop()


async def refusal(gw, **kwargs) -> dict:
    client = SocketClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(gw, **kwargs)
    assert client.connect_error is not None
    return client.connect_error


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kind", sorted(FORGED))
async def test_a_bad_token_is_refused_at_the_handshake_either_way(gw, kind):
    token = FORGED[kind]
    assert (await refusal(gw, token=token))["data"]["code"] == EXPECTED[kind]
    assert (await refusal(gw, headers={"Authorization": f"Bearer {token}"}))["data"]["code"] == EXPECTED[kind]


@pytest.mark.gen_test(timeout=30)
async def test_a_bad_token_is_refused_by_auth_hello_and_a_good_one_still_passes(gw):
    client = await SocketClient().connect(gw, None)
    try:
        for kind, token in sorted(FORGED.items()):
            reply = await client.call("auth:hello", {"token": token})
            assert reply["ok"] is False and reply["error"]["code"] == EXPECTED[kind], (kind, reply)
        reply = await client.call("auth:hello", {"token": make_token("hello-after-forgeries")})
        assert reply["ok"] and reply["data"]["userId"] == "hello-after-forgeries"
    finally:
        await client.close()
    other = await SocketClient().connect(gw, make_token("handshake-after-forgeries"))
    assert (await other.call("chat:leave", {"chatId": "c1"}))["ok"]
    await other.close()


@pytest.mark.gen_test(timeout=30)
async def test_no_token_and_no_secret_reaches_the_log(gw):
    good = make_token("logged-user")
    client = await SocketClient().connect(gw, good)
    await client.close()
    await refusal(gw, token=FORGED["wrong_key"])
    deadline = time.monotonic() + 10
    while not any(r.get("user_id") == "logged-user" and r.get("event") == "disconnect" for r in gw.log_records()):
        assert time.monotonic() < deadline, gw.logs()[-3000:]
        await asyncio.sleep(0.05)
    logs = gw.logs()
    assert "socket refused: INVALID_TOKEN" in logs
    for kind, token in [*FORGED.items(), ("good", good)]:
        header, _, rest = token.partition(".")
        payload, _, signature = rest.partition(".")
        assert token not in logs, kind
        for part in (payload, signature):
            assert len(part) < 8 or part not in logs, kind
    assert ACCESS_SECRET not in logs and REFRESH_SECRET not in logs
