"""PooledHTTPClient.forward_batched: GETs made in one loop turn share connections, pipelined,
against a real loopback upstream that records which connection carried each request."""

from __future__ import annotations

import asyncio

import pytest

from tornado_gateway.upstream.client import PooledHTTPClient
from tornado_gateway.upstream.forward import ForwardRequest
from tornado_gateway.upstream.pipeline import PIPELINE_DEPTH

from upstream.test_wire import Raw


class Recorder:
    """Answers each GET with its own path as the body (404 for paths ending in ``-no``),
    recording ``(connection, path)``; ``close_each``: ``Connection: close`` on every answer."""

    def __init__(self, close_each: bool = False) -> None:
        self.close_each = close_each
        self.seen: list[tuple[int, str]] = []

    async def start(self) -> "Recorder":
        self.raw = await Raw(self._serve).start()
        return self

    async def _serve(self, raw, reader, writer, n) -> None:
        while True:
            head = await raw.request(reader)
            path = head.split(b" ")[1].decode()
            self.seen.append((n, path))
            status = b"404 Not Found" if path.endswith("-no") else b"200 OK"
            extra = b"Connection: close\r\n" if self.close_each else b""
            writer.write(b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n%s"
                         % (status, extra, len(path), path.encode()))
            if self.close_each:  # half-close, then read on until the client lets go (no reset
                writer.write_eof()  # of unread requests racing the answer)
                await reader.read()
                return

    def per_connection(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for connection, _ in self.seen:
            counts[connection] = counts.get(connection, 0) + 1
        return counts


def get(upstream: str, path: str, outcome: dict) -> ForwardRequest:
    outcome["chunks"] = []
    return ForwardRequest(upstream, path, "GET", {"X-Path": path}, None, None, None, None,
                          lambda start, headers: outcome.__setitem__("code", start.code),
                          outcome["chunks"].append)


async def batch(client: PooledHTTPClient, upstream: str, paths: list[str]) -> list:
    """Every GET made in this one turn; (status, body) or the exception of each."""
    outcomes: list[dict] = [{} for _ in paths]
    futures = [client.forward_batched(get(upstream, path, outcome)) for path, outcome in zip(paths, outcomes)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    return [result if isinstance(result, Exception) else (outcome["code"], b"".join(outcome["chunks"]).decode())
            for result, outcome in zip(results, outcomes)]


@pytest.mark.gen_test
async def test_gets_of_one_turn_share_few_connections_and_each_gets_its_own_answer(client):
    recorder = await Recorder().start()
    paths = [f"/chats/c{i}" + ("-no" if i % 7 == 3 else "") for i in range(3 * PIPELINE_DEPTH + 1)]
    try:
        got = await batch(client, recorder.raw.base, paths)
    finally:
        await recorder.raw.close()
    assert got == [(404 if path.endswith("-no") else 200, path) for path in paths]
    counts = recorder.per_connection()
    assert len(counts) == 4 and recorder.raw.accepts == 4  # 49 requests: four connections
    assert max(counts.values()) <= PIPELINE_DEPTH and min(counts.values()) >= PIPELINE_DEPTH - 4  # shared evenly
    assert sorted(path for _, path in recorder.seen) == sorted(paths)  # each exactly once


@pytest.mark.gen_test
async def test_a_later_turn_reuses_the_connections_the_first_one_opened(client):
    recorder = await Recorder().start()
    try:
        first = await batch(client, recorder.raw.base, [f"/a{i}" for i in range(PIPELINE_DEPTH)])
        second = await batch(client, recorder.raw.base, [f"/b{i}" for i in range(PIPELINE_DEPTH)])
    finally:
        await recorder.raw.close()
    assert [code for code, _ in first + second] == [200] * (2 * PIPELINE_DEPTH)
    assert recorder.raw.accepts == 1


@pytest.mark.gen_test
async def test_an_upstream_closing_after_every_answer_still_answers_every_get(client):
    """Each connection carries one answer; the unanswered GETs go again on new connections."""
    recorder = await Recorder(close_each=True).start()
    paths = [f"/chats/c{i}" for i in range(6)]
    try:
        got = await batch(client, recorder.raw.base, paths)
    finally:
        await recorder.raw.close()
    assert got == [(200, path) for path in paths]
    answered = [path for connection, path in recorder.seen]
    assert sorted(set(answered)) == sorted(paths) and recorder.raw.accepts == 6


@pytest.mark.gen_test
async def test_a_lone_get_goes_at_once_and_a_get_with_a_body_is_refused(client):
    recorder = await Recorder().start()
    try:
        assert await batch(client, recorder.raw.base, ["/alone"]) == [(200, "/alone")]
        request = get(recorder.raw.base, "/with-body", {})
        request.body = b"{}"
        with pytest.raises(ValueError):
            client.forward_batched(request)
    finally:
        await recorder.raw.close()
    assert recorder.seen == [(1, "/alone")]


@pytest.mark.gen_test
async def test_an_unreachable_upstream_fails_every_get_of_the_batch(client):
    raw = await Raw(lambda *args: None).start()
    base = raw.base
    await raw.close()  # nothing listens there any more
    got = await batch(client, base, [f"/c{i}" for i in range(5)])
    assert len(got) == 5 and all(isinstance(outcome, Exception) for outcome in got)


@pytest.mark.gen_test
async def test_closing_the_client_fails_the_gets_still_waiting_for_the_end_of_the_turn(client):
    recorder = await Recorder().start()
    try:
        outcomes: list[dict] = [{}, {}]
        futures = [client.forward_batched(get(recorder.raw.base, f"/c{i}", outcome))
                   for i, outcome in enumerate(outcomes)]
        client.close()
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await recorder.raw.close()
    assert [type(result).__name__ for result in results] == ["HTTPStreamClosedError"] * 2
    assert recorder.seen == []


@pytest.mark.gen_test
async def test_gets_with_other_timeouts_are_not_batched_together(client):
    """A batch shares one deadline, so requests of one turn with other timeouts go apart."""
    recorder = await Recorder().start()
    try:
        outcomes: list[dict] = [{} for _ in range(4)]
        requests = [get(recorder.raw.base, f"/c{i}", outcome) for i, outcome in enumerate(outcomes)]
        requests[2].request_timeout = requests[3].request_timeout = 7.0
        await asyncio.gather(*[client.forward_batched(request) for request in requests])
    finally:
        await recorder.raw.close()
    by_connection: dict[int, set[str]] = {}
    for connection, path in recorder.seen:
        by_connection.setdefault(connection, set()).add(path)
    assert sorted(by_connection.values(), key=sorted) == [{"/c0", "/c1"}, {"/c2", "/c3"}]


# -- failure paths (found in review) ------------------------------------------------------


class Refused(Exception):
    """What services._Answer.chunk raises for an answer over its limit (_TooLarge)."""


def keep_alive(close_first_after_answer: bool = False):
    async def script(raw, reader, writer, n):
        while True:
            head = await raw.request(reader)
            path = head.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
            await writer.drain()
            if close_first_after_answer and n == 1:
                return  # closes without "Connection: close"
    return script


def plain_get(base: str, path: str, chunk=None) -> ForwardRequest:
    return ForwardRequest(base, path, "GET", {}, None, None, None, 5.0,
                          lambda start, headers: None, chunk or (lambda data: None))


def refuse(data: bytes) -> None:  # as services._Answer.chunk raising _TooLarge
    raise Refused()


@pytest.mark.gen_test
async def test_a_refusing_chunk_callback_fails_its_request_in_a_batch_as_in_forward(client):
    raw = await Raw(keep_alive()).start()
    try:
        with pytest.raises(Refused):  # the plain path: the callback's exception
            await client.forward(plain_get(raw.base, "/alone", refuse))
        futures = [client.forward_batched(plain_get(raw.base, "/big", refuse)),
                   client.forward_batched(plain_get(raw.base, "/other"))]
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await raw.close()
    assert isinstance(results[0], Refused), results  # as forward: the callback's exception
    assert results[1] is None


@pytest.mark.gen_test
async def test_closing_the_client_right_after_the_flush_settles_every_get(client):
    """close() in the turn that started the batch's task, before the task ran."""
    raw = await Raw(keep_alive()).start()
    try:
        futures = [client.forward_batched(plain_get(raw.base, f"/c{i}")) for i in range(2)]
        asyncio.get_running_loop().call_soon(client.close)  # runs after _flush, same iteration
        done, pending = await asyncio.wait(futures, timeout=2)
    finally:
        await raw.close()
    assert not pending, "futures never settled"


@pytest.mark.gen_test(timeout=20)
async def test_a_handed_over_connection_that_closed_is_replayed_and_frees_its_slot(io_loop):
    """The pool is full: the batch waits for a turn and is handed a connection the upstream
    closed just after its last answer (no Connection: close)."""
    client = PooledHTTPClient(force_instance=True, max_connections_per_host=1)
    raw = await Raw(keep_alive(close_first_after_answer=True)).start()
    try:
        first = client.forward(plain_get(raw.base, "/first"))  # holds the one slot
        await asyncio.sleep(0)
        batch = [client.forward_batched(plain_get(raw.base, f"/b{i}")) for i in range(2)]  # wait for a turn
        await first
        results = await asyncio.gather(*batch, return_exceptions=True)
        later = await asyncio.gather(client.forward(plain_get(raw.base, "/later")), return_exceptions=True)
    finally:
        client.close()
        await raw.close()
    assert results == [None, None]  # replayed on a new connection
    assert later == [None]  # and the dead connection's slot came back


@pytest.mark.gen_test(timeout=20)
async def test_a_batch_whose_deadline_passes_in_the_queue_sends_nothing(io_loop):
    """The pool is full past the batch's deadline: the batch fails with a timeout, none of its
    requests reaches the upstream, and the pool serves the next request."""
    async def script(raw, reader, writer, n):
        while True:
            head = await raw.request(reader)
            path = head.split(b" ")[1]
            if path == b"/slow":
                await asyncio.sleep(0.6)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))

    client = PooledHTTPClient(force_instance=True, max_connections_per_host=1)
    raw = await Raw(script).start()
    try:
        slow = client.forward(plain_get(raw.base, "/slow"))
        await asyncio.sleep(0)
        batch = []
        for i in range(2):
            request = plain_get(raw.base, f"/b{i}")
            request.request_timeout = 0.2  # the batch's deadline passes in the queue
            batch.append(client.forward_batched(request))
        results = await asyncio.gather(*batch, return_exceptions=True)
        await slow
        after = await client.forward(plain_get(raw.base, "/after"))
    finally:
        client.close()
        await raw.close()
    assert [type(result).__name__ for result in results] == ["HTTPTimeoutError"] * 2
    assert after is None
    assert [head.split(b" ")[1] for head in raw.requests] == [b"/slow", b"/after"]
