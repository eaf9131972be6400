"""PooledHTTPClient.forward_in_order: requests pipelined on one connection, against a real
loopback upstream that sees exactly what was written."""

from __future__ import annotations

import asyncio

import pytest
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError

from tornado_gateway.upstream.client import PooledHTTPClient
from tornado_gateway.upstream.forward import ForwardRequest

from upstream.test_wire import Raw


def answer(n: int, close: bool = False) -> bytes:
    body = b"answer %d" % n
    extra = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 201 Created\r\n%sContent-Length: %d\r\n\r\n%s" % (extra, len(body), body)


async def read_request(raw: Raw, reader) -> bytes:
    """One request, head and Content-Length body; its body is returned and recorded."""
    head = await raw.request(reader)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return await reader.readexactly(length)


class Answers:
    """What each request got: status and body, or the exception."""

    def __init__(self, upstream: str, bodies: list[bytes], timeout: float | None = None) -> None:
        self.outcomes: list = []
        self.requests = [self._request(upstream, body, timeout) for body in bodies]

    def _request(self, upstream: str, body: bytes, timeout: float | None) -> ForwardRequest:
        got: dict = {"chunks": []}
        self.outcomes.append(got)
        return ForwardRequest(upstream, "/messages", "POST", {"Idempotency-Key": body.decode()}, body,
                              None, None, timeout,
                              lambda start, headers: got.__setitem__("code", start.code),
                              got["chunks"].append)

    async def run(self, client: PooledHTTPClient) -> list:
        futures = client.forward_in_order(self.requests)
        results = await asyncio.gather(*futures, return_exceptions=True)
        return [result if isinstance(result, Exception) else (got["code"], b"".join(got["chunks"]))
                for result, got in zip(results, self.outcomes)]


@pytest.mark.gen_test
async def test_every_request_is_written_before_the_first_answer_and_answers_come_in_order(client):
    seen = []

    async def script(raw, reader, writer, n):
        for _ in range(3):  # all three arrive while none is answered
            seen.append(await read_request(raw, reader))
        writer.write(answer(1) + answer(2) + answer(3))
        await reader.read()

    raw = await Raw(script).start()
    try:
        got = await Answers(raw.base, [b"m1", b"m2", b"m3"]).run(client)
    finally:
        await raw.close()
    assert seen == [b"m1", b"m2", b"m3"] and raw.accepts == 1
    assert got == [(201, b"answer 1"), (201, b"answer 2"), (201, b"answer 3")]


@pytest.mark.gen_test
async def test_the_connection_is_kept_for_the_next_caller(client):
    async def script(raw, reader, writer, n):
        while True:
            body = await read_request(raw, reader)
            writer.write(answer(int(body[1:])))

    raw = await Raw(script).start()
    try:
        first = await Answers(raw.base, [b"m1", b"m2"]).run(client)
        second = await Answers(raw.base, [b"m3", b"m4"]).run(client)
    finally:
        await raw.close()
    assert [code for code, _ in first + second] == [201] * 4 and raw.accepts == 1


@pytest.mark.gen_test
async def test_what_a_closing_upstream_left_unanswered_goes_again_in_order(client):
    """The second answer says Connection: close: the third goes out again on a new connection."""
    seen = []

    async def script(raw, reader, writer, n):
        if n == 1:
            for _ in range(3):
                seen.append((n, await read_request(raw, reader)))
            writer.write(answer(1) + answer(2, close=True))
            await writer.drain()
            return  # closes with the third request unanswered
        while True:
            body = await read_request(raw, reader)
            seen.append((n, body))
            writer.write(answer(int(body[1:])))

    raw = await Raw(script).start()
    try:
        got = await Answers(raw.base, [b"m1", b"m2", b"m3"]).run(client)
    finally:
        await raw.close()
    assert got == [(201, b"answer 1"), (201, b"answer 2"), (201, b"answer 3")]
    assert seen == [(1, b"m1"), (1, b"m2"), (1, b"m3"), (2, b"m3")]


@pytest.mark.gen_test
async def test_a_connection_lost_midway_replays_the_rest_then_gives_up_on_a_dead_upstream(client):
    async def script(raw, reader, writer, n):
        if n == 1:
            for _ in range(3):
                await read_request(raw, reader)
            writer.write(answer(1))
            await writer.drain()
            return  # dies after one answer (no Connection: close)
        await read_request(raw, reader)  # the new connection dies before any answer

    raw = await Raw(script).start()
    try:
        got = await Answers(raw.base, [b"m1", b"m2", b"m3"]).run(client)
    finally:
        await raw.close()
    assert got[0] == (201, b"answer 1")
    assert all(isinstance(outcome, HTTPStreamClosedError) for outcome in got[1:])
    assert raw.accepts == 2  # one replay on a fresh connection, then no loop


@pytest.mark.gen_test
async def test_no_answer_in_time_fails_every_request_with_a_timeout(client):
    async def script(raw, reader, writer, n):
        await read_request(raw, reader)
        await reader.read()

    raw = await Raw(script).start()
    try:
        got = await Answers(raw.base, [b"m1", b"m2"], timeout=0.3).run(client)
    finally:
        await raw.close()
    assert all(isinstance(outcome, HTTPTimeoutError) for outcome in got)


@pytest.mark.gen_test
async def test_an_unreachable_upstream_fails_every_request(client):
    raw = await Raw(lambda *args: None).start()
    base = raw.base
    await raw.close()
    got = await Answers(base, [b"m1", b"m2"]).run(client)
    assert all(isinstance(outcome, OSError) for outcome in got)


@pytest.mark.gen_test
async def test_requests_to_two_upstreams_are_refused(client):
    requests = Answers("http://127.0.0.1:1", [b"a"]).requests + Answers("http://127.0.0.1:2", [b"b"]).requests
    outcomes = await asyncio.gather(*client.forward_in_order(requests), return_exceptions=True)
    assert all(isinstance(outcome, ValueError) for outcome in outcomes)
