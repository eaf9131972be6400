"""The client->server events of SPEC §5 (after authentication), one method each.

Every event is rate-limited per user by its class (message, typing, join),
its payload validated, then it calls the chats/messages services and fans
out. ``auth:hello`` lives in realtime/server.py with the rest of authentication.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, AsyncIterator, Coroutine

from tornado_gateway.realtime.payloads import (
    EventError,
    check_chat_create,
    check_chat_id,
    check_message_read,
    check_message_send,
    check_reaction_set,
    iso_time,
)
from tornado_gateway.edge.identity import Identity
from tornado_gateway.realtime.sessions import Authenticated, SocketState

if TYPE_CHECKING:
    from tornado_gateway.realtime.server import Realtime

log = logging.getLogger("tornado_gateway.realtime")

# event -> (rate class, method name)
EVENTS = {
    "chat:create": ("message", "chat_create"),
    "chat:join": ("join", "chat_join"),
    "chat:leave": ("join", "chat_leave"),
    "message:send": ("message", "message_send"),
    "message:read": ("message", "message_read"),
    "typing:start": ("typing", "typing_start"),
    "typing:stop": ("typing", "typing_stop"),
    "reaction:set": ("message", "reaction_set"),
}
KNOWN_EVENTS = frozenset(EVENTS) | {"auth:hello"}


class PreparedSend:
    """A validated message:send whose clientMessageId is reserved (earlier is None) or
    was sent before (earlier = that message)."""

    __slots__ = ("user_id", "body", "earlier")

    def __init__(self, user_id: str, body: dict, earlier: dict | None) -> None:
        self.user_id = user_id
        self.body = body
        self.earlier = earlier


class RealtimeEvents:
    def __init__(self, realtime: Realtime) -> None:
        self.realtime = realtime
        self.services = realtime.services
        settings = realtime.settings
        self.rates = {"message": settings.socket_rate_message, "typing": settings.socket_rate_typing,
                      "join": settings.socket_rate_join}

    def start_early(self, state: SocketState, event: str, payload: Any) -> asyncio.Task | None:
        """Start, as the event arrives, the part of its work that needs no earlier event
        of the socket to have taken effect: the rate-limit check (a Redis round trip)
        and, for ``message:send``, validation, the membership check and the idempotency
        reservation. The socket's worker awaits it when the event's turn comes, so
        these round trips overlap the earlier events' upstream calls while the events
        still take effect in order. None when not possible yet (unauthenticated)."""
        entry = EVENTS.get(event)
        if entry is None or state.identity is None:
            return None
        coro: Coroutine[Any, Any, Any]
        if event == "message:send":
            coro = self._prepare_send_early(state.identity, payload)
        else:
            coro = self._check_rate(entry[0], state.identity.user_id)
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_retrieve)
        return task

    def abandon(self, early: asyncio.Task | None) -> None:
        """The event will not run (socket closing, token refused): undo its reservation."""
        if early is not None:
            early.add_done_callback(self._release_unused)

    def _release_unused(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        prepared = task.result()
        if isinstance(prepared, PreparedSend) and prepared.earlier is None:
            release = asyncio.ensure_future(self.realtime.sends.release(
                prepared.user_id, prepared.body["chatId"], prepared.body["clientMessageId"]))
            release.add_done_callback(_retrieve)

    async def _check_rate(self, rate_class: str, user_id: str) -> None:
        await self.realtime.check_rate(user_id, "socket_" + rate_class, self.rates[rate_class])

    async def dispatch(self, state: Authenticated, event: str, payload: Any,
                       early: asyncio.Task | None = None) -> dict | None:
        entry = EVENTS.get(event)
        if entry is None:
            raise EventError("VALIDATION_FAILED", f"unknown event {event!r}")
        rate_class, method = entry
        if early is None:
            await self._check_rate(rate_class, state.user_id)
        else:
            prepared = await early
            if isinstance(prepared, PreparedSend):
                return await self._send_prepared(state, prepared)
        return await getattr(self, method)(state, payload)

    async def chat_create(self, state: Authenticated, payload: Any) -> dict:
        body = check_chat_create(payload)
        chat = await self.services.create_chat(state.identity, body)
        members = set(body["memberIds"]) | {state.user_id} | set(_member_ids(chat))
        await self.realtime.broadcast("chat:updated", {"chat": chat}, ["user:" + m for m in sorted(members)])
        return {"chat": chat}

    async def chat_join(self, state: Authenticated, payload: Any) -> dict:
        chat_id = check_chat_id(payload)["chatId"]
        await self.services.check_member(state.identity, chat_id)
        room = "chat:" + chat_id
        await self.realtime.sio.enter_room(state.sid, room)
        state.chats.add(chat_id)
        live = self.realtime.room_confirmation(room)  # acked once this node hears the room
        first = await self.realtime.presence.chat_joined(state.user_id, chat_id)  # meanwhile
        await self.realtime.room_confirmed(room, live)
        if first:
            # The user's first socket in this chat: the room learns the user is online (once).
            await self.realtime.broadcast("presence:update", {"userId": state.user_id,
                                                              "status": "online"},
                                          room, skip_sid=state.sid)
        return {"chatId": chat_id}

    async def chat_leave(self, state: Authenticated, payload: Any) -> dict:
        chat_id = check_chat_id(payload)["chatId"]
        await self.realtime.typing.stop(state.sid, chat_id)
        await self.realtime.sio.leave_room(state.sid, "chat:" + chat_id)
        state.chats.discard(chat_id)
        return {"chatId": chat_id}

    async def message_send(self, state: Authenticated, payload: Any) -> dict:
        return await self._send_prepared(state, await self._prepare_send(state.identity, payload))

    async def _prepare_send_early(self, identity: Identity, payload: Any) -> "PreparedSend":
        await self._check_rate("message", identity.user_id)
        return await self._prepare_send(identity, payload)

    async def _prepare_send(self, identity: Identity, payload: Any) -> "PreparedSend":
        """Validate, check membership, reserve the clientMessageId (or find its message)."""
        body = check_message_send(payload)
        await self.services.check_member(identity, body["chatId"])
        earlier = await self.realtime.sends.reserve(identity.user_id, body["chatId"],
                                                    body["clientMessageId"])
        return PreparedSend(identity.user_id, body, earlier)

    async def _send_prepared(self, state: Authenticated, prepared: "PreparedSend") -> dict:
        """The in-order part of message:send: the upstream call, then the fan-out."""
        if prepared.earlier is not None:
            return {"message": prepared.earlier}  # a retry: same message, no second message:new
        body = prepared.body
        try:
            message = await self.services.send_message(state.identity, body, body["clientMessageId"])
        except BaseException:
            await self.realtime.sends.release(state.user_id, body["chatId"], body["clientMessageId"])
            raise
        return await self._sent(state, prepared, message)

    async def send_in_order(self, state: Authenticated,
                            batch: list["PreparedSend"]) -> AsyncIterator[dict | Exception]:
        """Fresh message:send of one socket (reserved, none sent before), their upstream POSTs
        pipelined (services.send_messages); each one's ack data or error in order, each
        fanned out as its answer comes, in order."""
        answers = self.services.send_messages(state.identity, [prepared.body for prepared in batch])
        for prepared, answer in zip(batch, answers):
            body = prepared.body
            result: dict | Exception
            try:
                message = await answer
            except Exception as exc:
                await self.realtime.sends.release(state.user_id, body["chatId"], body["clientMessageId"])
                result = exc
            else:
                try:
                    result = await self._sent(state, prepared, message)
                except Exception as exc:
                    result = exc
            yield result

    async def _sent(self, state: Authenticated, prepared: "PreparedSend", message: dict) -> dict:
        """The messages service took the message: remember it for retries, fan it out."""
        body = prepared.body
        message.setdefault("chatId", body["chatId"])
        message.setdefault("senderId", state.user_id)
        message.setdefault("clientMessageId", body["clientMessageId"])
        await self.realtime.sends.complete(state.user_id, body["chatId"], body["clientMessageId"], message)
        await self.realtime.broadcast("message:new", {"message": message}, "chat:" + body["chatId"],
                                      skip_sid=state.sid)
        return {"message": message}

    @staticmethod
    def fresh_send(event: str, early: asyncio.Task | None) -> "PreparedSend | None":
        """The prepared message:send of an event whose early part is done, when it is a new
        message (not a retry): such sends may go to the messages service pipelined."""
        if event != "message:send" or early is None or not early.done() or early.cancelled() \
                or early.exception() is not None:
            return None
        prepared = early.result()
        return prepared if isinstance(prepared, PreparedSend) and prepared.earlier is None else None

    async def message_read(self, state: Authenticated, payload: Any) -> dict:
        body = check_message_read(payload)
        await self.services.check_member(state.identity, body["chatId"])
        await self.services.mark_read(state.identity, body["chatId"], body["messageIds"])
        await self.realtime.broadcast("receipt:read", {
            "chatId": body["chatId"], "messageIds": body["messageIds"], "userId": state.user_id,
            "at": iso_time()}, "chat:" + body["chatId"])
        return {}

    async def typing_start(self, state: Authenticated, payload: Any) -> dict:
        chat_id = self._joined(state, payload)
        await self.realtime.typing.start(state.sid, state.user_id, chat_id)
        return {}

    async def typing_stop(self, state: Authenticated, payload: Any) -> dict:
        chat_id = self._joined(state, payload)
        await self.realtime.typing.stop(state.sid, chat_id)
        return {}

    async def reaction_set(self, state: Authenticated, payload: Any) -> dict:
        body = check_reaction_set(payload)
        await self.services.check_member(state.identity, body["chatId"])
        message = await self.services.set_reaction(state.identity, body["chatId"], body["messageId"],
                                                   body["emoji"])
        message.setdefault("id", body["messageId"])
        message.setdefault("chatId", body["chatId"])
        await self.realtime.broadcast("message:edit", {"message": message}, "chat:" + body["chatId"])
        return {"message": message}

    @staticmethod
    def _joined(state: Authenticated, payload: Any) -> str:
        chat_id = check_chat_id(payload)["chatId"]
        if chat_id not in state.chats:
            raise EventError("FORBIDDEN", "join the chat (chat:join) before typing in it")
        return chat_id


def _retrieve(task: asyncio.Task) -> None:
    """An early check whose event was dropped (socket closed) must not warn."""
    if not task.cancelled():
        task.exception()


def _member_ids(chat: dict) -> list[str]:
    """Member ids out of a chat object: ``memberIds`` or ``members`` (ids or {id}/{userId})."""
    out = []
    for member in chat.get("memberIds") or chat.get("members") or ():
        if isinstance(member, dict):
            member = member.get("id", member.get("userId"))
        if isinstance(member, (str, int)) and not isinstance(member, bool):
            out.append(str(member))
    return out
