"""A burst of message:send from one socket: the POSTs are pipelined on one connection to the
messages service, reach it in order, and each message is fanned out once, in order."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from chat_fakes import ChatFakes, connected
from upstream.test_wire import Raw

ENV = {"SOCKET_RATE_MESSAGE": "200/10"}
HOLD = 0.4  # the first answer waits this long: the burst queues up behind it


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


class MessagesService:
    """A raw messages service: records each request with its connection, answers in order after
    ``HOLD`` for the first request; dedupes by Idempotency-Key as the contract says.

    ``close_after``: on the first connection, close after that many answers (a crash midway)."""

    def __init__(self, close_after: int | None = None) -> None:
        self.close_after = close_after
        self.received: list[tuple[int, str]] = []  # (connection, idempotency key)
        self.most_unanswered = 0
        self.by_key: dict[str, dict] = {}

    async def start(self) -> "MessagesService":
        self.raw = await Raw(self._serve).start()
        self.url = self.raw.base
        return self

    async def _serve(self, raw, reader, writer, n) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        answering = asyncio.ensure_future(self._answer(queue, writer, n))
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:] if line)
                body = json.loads(await reader.readexactly(int(headers["content-length"])))
                self.received.append((n, headers["idempotency-key"]))
                queue.put_nowait((headers, body))
                self.most_unanswered = max(self.most_unanswered, queue.qsize())
        finally:
            answering.cancel()

    async def _answer(self, queue: asyncio.Queue, writer, n) -> None:
        answered = 0
        while True:
            headers, body = await queue.get()
            if len(self.received) == 1:
                await asyncio.sleep(HOLD)
            key = headers["idempotency-key"]
            message = self.by_key.setdefault(key, {"id": f"m{len(self.by_key) + 1}", "chatId": body["chatId"],
                                                   "senderId": headers["x-user-id"], "text": body["text"]})
            payload = json.dumps({"message": message}).encode()
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
            answered += 1
            if n == 1 and answered == self.close_after:
                await asyncio.sleep(0.05)  # the rest of the burst arrives, unanswered
                writer.transport.abort()
                return

    async def close(self) -> None:
        await self.raw.close()


async def burst(start_gateway, stubs, service: MessagesService, count: int):
    fakes = ChatFakes(stubs)
    gw = start_gateway({**ENV, "MESSAGES_SERVICE_URL": service.url})
    users, chat = [uid("pipe-a"), uid("pipe-b")], uid("chat")
    fakes.add_chat(chat, users)
    a, b = [await connected(gw, user) for user in users]
    for client in (a, b):
        assert (await client.call("chat:join", {"chatId": chat}))["ok"]
    keys = [uid("c") for _ in range(count)]
    acks = await asyncio.gather(*[a.call("message:send", {"chatId": chat, "clientMessageId": key,
                                                          "text": f"text {i}"})
                                  for i, key in enumerate(keys)])
    return a, b, keys, acks


async def nothing_delivered_twice(a, b, chat: str, count: int) -> None:
    """A marker sent after the burst is the next message:new b gets (no message came twice)."""
    marker = await a.call("message:send", {"chatId": chat, "clientMessageId": uid("c"), "text": "marker"})
    assert marker["ok"]
    after = await b.next("message:new", count=count + 1)
    assert [m["message"]["text"] for m in after][count:] == ["marker"]
    await a.close()
    await b.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_burst_is_pipelined_and_arrives_in_order(start_gateway, stubs):
    service = await MessagesService().start()
    try:
        a, b, keys, acks = await burst(start_gateway, stubs, service, 8)
        assert [ack["data"]["message"]["text"] for ack in acks] == [f"text {i}" for i in range(8)]
        got = await b.next("message:new", count=8)
        assert [m["message"]["text"] for m in got] == [f"text {i}" for i in range(8)]
        assert [key for _, key in service.received] == keys  # in order, each once
        assert {conn for conn, _ in service.received} == {1}
        assert service.most_unanswered >= 2  # the burst was written without waiting for answers
        await nothing_delivered_twice(a, b, got[0]["message"]["chatId"], 8)
    finally:
        await service.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_service_crashing_midway_loses_nothing_and_duplicates_nothing(start_gateway, stubs):
    service = await MessagesService(close_after=2).start()
    try:
        a, b, keys, acks = await burst(start_gateway, stubs, service, 8)
        assert all(ack["ok"] for ack in acks), acks
        assert [ack["data"]["message"]["text"] for ack in acks] == [f"text {i}" for i in range(8)]
        got = await b.next("message:new", count=8)
        assert [m["message"]["text"] for m in got] == [f"text {i}" for i in range(8)]
        first_arrivals = list(dict.fromkeys(key for _, key in service.received))
        assert first_arrivals == keys
        assert len(service.received) > len(keys)  # the unanswered ones went again (same keys)
        assert {conn for conn, _ in service.received} == {1, 2}
        await nothing_delivered_twice(a, b, got[0]["message"]["chatId"], 8)
    finally:
        await service.close()


@pytest.mark.gen_test(timeout=30)
async def test_one_refused_message_in_a_burst_fails_alone_and_may_be_sent_again(start_gateway, stubs):
    fakes = ChatFakes(stubs)
    gw = start_gateway(ENV)
    users, chat = [uid("pipe-c"), uid("pipe-d")], uid("chat")
    fakes.add_chat(chat, users)
    a, b = [await connected(gw, user) for user in users]
    for client in (a, b):
        assert (await client.call("chat:join", {"chatId": chat}))["ok"]
    texts = ["slow:300 first", "two", "three", "fail:500 four", "five", "six"]
    keys = [uid("c") for _ in texts]
    acks = await asyncio.gather(*[a.call("message:send", {"chatId": chat, "clientMessageId": key, "text": text})
                                  for key, text in zip(keys, texts)])
    assert [ack["ok"] for ack in acks] == [True, True, True, False, True, True]
    assert acks[3]["error"]["code"] == "UPSTREAM_ERROR"
    got = await b.next("message:new", count=5)
    assert [m["message"]["text"] for m in got] == ["slow:300 first", "two", "three", "five", "six"]
    again = await a.call("message:send", {"chatId": chat, "clientMessageId": keys[3], "text": "four"})
    assert again["ok"] and again["data"]["message"]["text"] == "four"  # its key was released
    got = await b.next("message:new", count=6)
    assert got[5]["message"]["text"] == "four"
    await a.close()
    await b.close()
