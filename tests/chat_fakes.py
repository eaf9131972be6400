"""Fake chats and messages services (stub hooks) and a recording Socket.IO client.

``ChatFakes(stubs)`` installs hooks on the stub upstreams so they behave like
the real services for the real-time events, at the paths the public routes
reach (``POST /api/chats`` -> ``POST {chats}/``, ``GET /api/chats/c1`` ->
``GET {chats}/c1``, ``POST /api/messages`` -> ``POST {messages}/``, ...; pass
``chats_base``/``messages_base`` when the service URLs carry a path): chats with members (GET 2xx for
members, 403 for others, 404 for unknown chats), messages with ids that
honour ``Idempotency-Key``, read marks and reactions. A message text
``slow:<ms> ...`` makes the create call wait; ``fail:<status>`` answers that
status.

``SocketClient`` wraps python-socketio's AsyncClient: it records every
server event, waits for the next one of a name, and calls events with acks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import socketio

from harness import ORIGIN, make_token


class ChatFakes:
    def __init__(self, stubs, chats_base: str = "", messages_base: str = ""):
        self.stubs = stubs
        self.messages_base = messages_base
        self.chats: dict[str, dict] = {}
        self.messages: dict[str, dict] = {}
        self.by_key: dict[tuple[str, str, str], dict] = {}
        self.ids = itertools.count(1)
        stubs.hooks[("chats", "POST", chats_base or "/")] = self._create_chat
        stubs.hooks[("chats", "GET", chats_base + "/*")] = self._get_chat
        stubs.hooks[("messages", "POST", messages_base or "/")] = self._create_message
        stubs.hooks[("messages", "POST", messages_base + "/read")] = self._read
        stubs.hooks[("messages", "*", messages_base + "/*")] = self._reaction

    def add_chat(self, chat_id: str, members, kind: str = "group") -> dict:
        chat = {"id": chat_id, "type": kind, "memberIds": list(members)}
        self.chats[chat_id] = chat
        return chat

    def created(self, path: str | None = None) -> list:
        path = path or self.messages_base or "/"
        return [r for r in self.stubs.received("messages") if r.path == path and r.method == "POST"]

    @staticmethod
    def _answer(handler, status: int, body: dict) -> None:
        handler.set_status(status)
        handler.set_header("Content-Type", "application/json")
        handler.finish(json.dumps(body))

    def _create_chat(self, record, handler):
        body = record.json()
        chat_id = f"chat{next(self.ids)}"
        members = sorted(set(body.get("memberIds", [])) | {record.headers["x-user-id"]})
        chat = self.add_chat(chat_id, members, body.get("type", "group"))
        if body.get("name"):
            chat["name"] = body["name"]
        self._answer(handler, 201, {"chat": chat})

    def _get_chat(self, record, handler):
        chat = self.chats.get(record.path.rsplit("/", 1)[-1])
        if chat is None:
            return self._answer(handler, 404, {"error": {"message": "no such chat"}})
        if record.headers.get("x-user-id") not in chat["memberIds"]:
            return self._answer(handler, 403, {"error": {"message": "not a member"}})
        self._answer(handler, 200, {"chat": chat})

    async def _create_message(self, record, handler):
        body = record.json()
        user = record.headers.get("x-user-id")
        text = body.get("text") or ""
        if text.startswith("slow:"):
            await asyncio.sleep(int(text.split()[0][5:]) / 1000)
        if text.startswith("fail:"):
            return self._answer(handler, int(text.split()[0][5:]), {"error": {"message": "refused"}})
        chat = self.chats.get(body.get("chatId"))
        if chat is None:
            return self._answer(handler, 404, {"error": {"message": "no such chat"}})
        if user not in chat["memberIds"]:
            return self._answer(handler, 403, {"error": {"message": "not a member"}})
        key = (user, chat["id"], record.headers.get("idempotency-key", ""))  # SPEC §5: per chat
        if key in self.by_key:
            return self._answer(handler, 200, {"message": self.by_key[key]})
        message = {"id": f"m{next(self.ids)}", "chatId": chat["id"], "senderId": user, "text": text,
                   "createdAt": time.time()}
        self.by_key[key] = self.messages[message["id"]] = message
        self._answer(handler, 201, {"message": message})

    def _read(self, record, handler):
        self._answer(handler, 200, {"ok": True})

    def _reaction(self, record, handler):
        parts = record.path[len(self.messages_base):].strip("/").split("/")
        message = self.messages.get(parts[0]) if len(parts) == 2 and parts[1] == "reactions" else None
        if message is None:
            return self._answer(handler, 404, {"error": {"message": "no such message"}})
        reactions = message.setdefault("reactions", {})
        user = record.headers.get("x-user-id")
        if record.method == "DELETE":
            reactions.pop(user, None)
        else:
            reactions[user] = record.json()["emoji"]
        self._answer(handler, 200, {"message": message})


class _Client(socketio.AsyncClient):
    """An AsyncClient that can decline to ack ``message:new`` (python-socketio always acks)."""

    ack_message_new = True

    async def _handle_event(self, namespace, id, data):
        if data and data[0] == "message:new" and not self.ack_message_new:
            id = None
        await super()._handle_event(namespace, id, data)


class SocketClient:
    """A recording Socket.IO client for the tests."""

    def __init__(self, ack_message_new: bool = True):
        self.sio = _Client(reconnection=False)
        self.sio.ack_message_new = ack_message_new
        self.received: list[tuple[str, object]] = []
        self._arrived = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.connect_error = None

        @self.sio.on("*")
        async def any_event(event, data=None):
            self.received.append((event, data))
            self._arrived.set()
            return True

        @self.sio.event
        async def disconnect(reason=None):
            self.disconnected.set()

        @self.sio.event
        async def connect_error(data):
            self.connect_error = data

    async def connect(self, gateway, token: str | None = None, *, auth=None, headers=None,
                      transports=("websocket",)) -> "SocketClient":
        if auth is None and token is not None:
            auth = {"token": token}
        await self.sio.connect(gateway.base, auth=auth, headers={"Origin": ORIGIN, **(headers or {})},
                               transports=list(transports), wait_timeout=5)
        return self

    async def call(self, event: str, data=None, timeout: float = 5):
        return await self.sio.call(event, data, timeout=timeout)

    async def emit(self, event: str, data=None):
        await self.sio.emit(event, data)

    def events(self, name: str) -> list:
        return [data for event, data in self.received if event == name]

    async def next(self, name: str, timeout: float = 5, count: int = 1) -> list:
        """Wait until ``count`` events ``name`` have arrived; return all of them."""
        deadline = time.monotonic() + timeout
        while len(self.events(name)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name} after {timeout}s; got {self.received!r}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return self.events(name)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


async def connected(gateway, user: str | None, **kwargs) -> SocketClient:
    """A SocketClient connected as ``user`` (None: without a token)."""
    ack = kwargs.pop("ack_message_new", True)
    token = make_token(user) if user is not None else None
    return await SocketClient(ack_message_new=ack).connect(gateway, token, **kwargs)
