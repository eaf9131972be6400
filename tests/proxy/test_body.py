"""Request and response bodies through the proxy: limits, refusals before the body,
streaming both ways with backpressure."""

import asyncio
import hashlib
import json
import time

import pytest

from harness import ORIGIN
from internal_client import AUTH_ENV
from proxy.support import HeadOnlyUpstream, LIMIT, MIB, TOKEN, fetch, parse_raw, raw_exchange
from proxy.support import dead_ports, hangup, proxy_gw  # noqa: F401 (fixtures)


# -- bodies -------------------------------------------------------------------------------

@pytest.mark.gen_test
async def test_body_with_content_length_over_the_limit_is_413_and_never_forwarded(proxy_gw, stubs):
    for expect in (True, False):  # waiting for 100 Continue, or sending the body right away
        response = await fetch(proxy_gw, "/api/chats/upload", method="POST", body=b"a" * (LIMIT + 1),
                               expect_100_continue=expect)
        assert response.code == 413
        assert json.loads(response.body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
    # A huge declared length is refused from the head alone.
    data = raw_exchange(proxy_gw.port, (f"POST /api/chats/upload HTTP/1.1\r\nHost: gw\r\n"
                                        f"Authorization: Bearer {TOKEN}\r\n"
                                        f"Content-Length: {50 * MIB}\r\n\r\n").encode())
    assert parse_raw(data)[0] == 413
    assert stubs.received() == []


@pytest.mark.gen_test(timeout=20)
async def test_refusals_of_bodyless_and_small_requests_keep_the_connection(proxy_gw, stubs):
    """A 401, a 404 with a small body and a 413 just over the limit are answered on the
    same keep-alive connection, which then still carries a proxied request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_gw.port)

    async def exchange(raw: bytes) -> tuple[int, dict, bytes]:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status, headers, _ = parse_raw(head)
        return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))

    auth = f"Authorization: Bearer {TOKEN}\r\n"
    status, headers, body = await exchange(b"GET /api/users/echo HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status == 401 and json.loads(body)["error"]["code"] == "UNAUTHENTICATED"
    assert headers.get("connection", "").lower() != "close"
    status, _, body = await exchange(f"POST /nowhere HTTP/1.1\r\nHost: gw\r\n{auth}"
                                     f"Content-Length: 10\r\n\r\n0123456789".encode())
    assert status == 404 and json.loads(body)["error"]["code"] == "NOT_FOUND"
    status, _, body = await exchange(f"POST /api/chats/upload HTTP/1.1\r\nHost: gw\r\n{auth}"
                                     f"Content-Length: {LIMIT + 1}\r\n\r\n".encode() + b"a" * (LIMIT + 1))
    assert status == 413 and json.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
    status, _, _ = await exchange(f"GET /api/users/echo HTTP/1.1\r\nHost: gw\r\n{auth}\r\n".encode())
    assert status == 200
    writer.close()
    assert [r.path for r in stubs.received()] == ["/users/echo"]  # only the last one went upstream


@pytest.mark.parametrize("path, auth, status, code", [
    ("/api/chats/upload", True, 413, "PAYLOAD_TOO_LARGE"),  # declared far beyond the limit
    ("/api/chats/upload", False, 401, "UNAUTHENTICATED"),
    ("/nowhere", True, 404, "NOT_FOUND"),
])
@pytest.mark.gen_test(timeout=20)
async def test_refusal_before_the_body_reaches_a_client_still_sending_it(proxy_gw, stubs, path, auth,
                                                                         status, code):
    """Answered from the head while the body is on its way: the client reads the whole JSON
    error and then EOF, never a connection reset (the gateway's lingering close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_gw.port)
    head = f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {50 * MIB}\r\n"
    if auth:
        head += f"Authorization: Bearer {TOKEN}\r\n"
    writer.write(head.encode() + b"\r\n" + b"z" * (512 * 1024))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)  # to EOF; a reset raises here
    got, headers, body = parse_raw(data)
    assert got == status and headers["connection"] == "close"
    assert len(body) == int(headers["content-length"]) and json.loads(body)["error"]["code"] == code
    writer.close()
    assert stubs.received() == []


@pytest.mark.gen_test
async def test_chunked_body_over_the_limit_is_413_and_the_upstream_request_aborted(proxy_gw, stubs):
    piece = 40000
    data = (f"POST /api/chats/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n").encode()
    data += (b"%x\r\n" % piece + b"b" * piece + b"\r\n") * 2 + b"0\r\n\r\n"
    status, _, body = parse_raw(raw_exchange(proxy_gw.port, data))
    assert status == 413 and json.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
    await asyncio.sleep(0.2)
    assert stubs.received() == []  # its request never completed


@pytest.mark.gen_test
async def test_chunked_body_under_the_limit_arrives_whole(proxy_gw, stubs):
    data = (f"POST /api/chats/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    data += (b"2710\r\n" + b"c" * 10000 + b"\r\n") * 3 + b"0\r\n\r\n"
    status, _, body = parse_raw(raw_exchange(proxy_gw.port, data))
    assert status == 200 and json.loads(body)["body_len"] == 30000
    assert stubs.received()[0].body == b"c" * 30000


@pytest.mark.gen_test
async def test_expect_100_continue_is_answered_by_the_gateway_not_forwarded(proxy_gw, stubs):
    response = await fetch(proxy_gw, "/api/chats/upload", method="POST", body=b"d" * 5000,
                           expect_100_continue=True)
    assert response.code == 200
    seen = stubs.received("chats")[0]
    assert seen.body == b"d" * 5000 and "expect" not in seen.headers


@pytest.mark.gen_test
async def test_cors_preflight_on_a_proxied_route_is_answered_by_the_gateway(proxy_gw, stubs):
    response = await fetch(proxy_gw, "/api/chats/x", method="OPTIONS", auth=False, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert stubs.received() == []


@pytest.mark.gen_test
@pytest.mark.parametrize("framing", [
    "Content-Length: 5\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Content-Length: 5, 6",
    "Content-Length: -5",
], ids=["cl_and_te", "te_not_chunked", "two_lengths", "negative"])
async def test_ambiguous_body_framing_is_400_and_never_forwarded(proxy_gw, stubs, framing):
    data = (f"POST /api/chats/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"{framing}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode()
    assert parse_raw(raw_exchange(proxy_gw.port, data))[0] == 400
    assert stubs.received() == []


@pytest.mark.gen_test
async def test_get_with_a_chunked_body_is_411(proxy_gw, stubs):
    data = (f"GET /api/chats/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode()
    assert parse_raw(raw_exchange(proxy_gw.port, data))[0] == 411
    assert stubs.received() == []


@pytest.mark.gen_test(timeout=60)
async def test_media_route_accepts_a_large_upload_and_it_arrives_complete(proxy_gw, stubs):
    body = bytes(range(256)) * (20 * MIB // 256)
    response = await fetch(proxy_gw, "/api/media/upload", method="POST", body=body,
                           headers={"Content-Type": "application/octet-stream"})
    assert response.code == 200, response.body[:200]
    received = stubs.received("media")[0].body
    assert len(received) == len(body)
    assert hashlib.sha256(received).digest() == hashlib.sha256(body).digest()


@pytest.mark.gen_test(timeout=60)
async def test_chunked_upload_streams_through_complete(proxy_gw, stubs):
    chunk = b"0123456789abcdef" * 4096  # 64 KiB

    async def producer(write):
        for _ in range(80):  # 5 MiB
            await write(chunk)

    response = await fetch(proxy_gw, "/api/media/upload", method="PUT", body_producer=producer)
    assert response.code == 200
    assert stubs.received("media")[0].body == chunk * 80


@pytest.mark.gen_test(timeout=60)
async def test_large_download_arrives_complete(proxy_gw, stubs):
    size = 50 * MIB
    received = 0
    wrong = 0

    def on_chunk(chunk):
        nonlocal received, wrong
        received += len(chunk)
        wrong += len(chunk) - chunk.count(b"z")

    response = await fetch(proxy_gw, f"/api/media/bytes/{size}", streaming_callback=on_chunk)
    assert response.code == 200
    assert response.headers["Content-Length"] == str(size)
    assert received == size and wrong == 0


def rss_kib(gw) -> int:
    with open(f"/proc/{gw.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def until_still(read, quiet: float = 1.0, timeout: float = 30.0):
    """Wait until ``read()`` stops changing for ``quiet`` seconds; return its value."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"still moving after {timeout}s: {last}")


@pytest.mark.gen_test(timeout=90)
async def test_a_client_that_does_not_read_holds_the_upstream_back(proxy_gw, stubs):
    """Download backpressure: the upstream stalls long before its 256 MiB are sent, the
    gateway's memory stays bounded, and the whole body arrives once the client reads."""
    size = 256 * MIB
    progress = {"sent": 0}

    async def stream(record, handler):
        handler.set_header("Content-Length", str(size))
        chunk = b"y" * 65536
        while progress["sent"] < size:
            handler.write(chunk)
            await handler.flush()
            progress["sent"] += len(chunk)
        handler.finish()

    stubs.hooks[("GET", "/big")] = stream
    rss_before = rss_kib(proxy_gw)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_gw.port)
    writer.write(f"GET /api/media/big HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                 .encode())
    stalled_at = await until_still(lambda: progress["sent"])
    assert 0 < stalled_at < 64 * MIB  # the kernels' socket buffers, not the body
    assert rss_kib(proxy_gw) - rss_before < 32 * 1024
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    received = 0
    while received < size:
        received += len(await asyncio.wait_for(reader.read(1 << 20), 30))
    assert received == size and progress["sent"] == size
    writer.close()


@pytest.mark.gen_test(timeout=90)
async def test_an_upstream_that_does_not_read_holds_the_client_back(start_gateway, stubs):
    """Upload backpressure: with the upstream not reading, the gateway stops reading the
    client's 1 GiB body after a bounded amount, and its memory stays bounded."""
    upstream = HeadOnlyUpstream(hold=True)
    gw = start_gateway({**AUTH_ENV, "RATE_LIMIT_ENABLED": "false", "GATEWAY_ROUTES":
                        f"/api/sink=http://127.0.0.1:{upstream.port};max_body={2 << 30};timeout=60"})
    try:
        rss_before = rss_kib(gw)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(f"POST /api/sink/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Length: {1 << 30}\r\n\r\n".encode())
        sent = {"bytes": 0}

        async def send_forever():
            chunk = b"u" * 65536
            while True:
                writer.write(chunk)
                await writer.drain()
                sent["bytes"] += len(chunk)

        sender = asyncio.ensure_future(send_forever())
        stalled_at = await until_still(lambda: sent["bytes"])
        assert 0 < stalled_at < 64 * MIB
        assert rss_kib(gw) - rss_before < 32 * 1024
        sender.cancel()
        writer.close()
    finally:
        upstream.close()
