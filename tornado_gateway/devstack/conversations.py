"""The chats and messages stand-ins: chats and membership, messages, read marks, reactions, edits.

A change a client made over HTTP is announced through the event ingress; the
calls the gateway makes for socket events are not, because the gateway fans
those out itself (``ServiceHandler.from_client`` tells them apart).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from tornado.httpclient import HTTPRequest

from tornado_gateway import codec
from tornado_gateway.devstack.store import Chat, Message, now_iso
from tornado_gateway.realtime.payloads import MAX_TEXT  # one limit for HTTP and sockets
from tornado_gateway.devstack.web import ServiceHandler, refuse, string_field

log = logging.getLogger("tornado_gateway.devstack")
PAGE_DEFAULT, PAGE_MAX = 50, 100
MAX_MEMBERS = 256


class ChatAccess(ServiceHandler):
    def member_chat(self, chat_id: str, user_id: str) -> Chat:
        chat = self.store.chats.get(chat_id)
        if chat is None:
            refuse(404, "NOT_FOUND", "no such chat")
        if user_id not in chat.member_ids:
            refuse(403, "FORBIDDEN", "not a member of this chat")
        return chat

    def own_message(self, message_id: str, user_id: str) -> Message:
        message = self.store.messages.get(message_id)
        if message is None or message.deleted:
            refuse(404, "NOT_FOUND", "no such message")
        self.member_chat(message.chat_id, user_id)
        if message.sender_id != user_id:
            refuse(403, "FORBIDDEN", "only the author may change a message")
        return message

    async def announce(self, event: str, message: Message) -> None:
        await self.ctx.announcer.emit(event, {"chat": message.chat_id}, {"message": message.public()})


class ChatsHandler(ChatAccess):
    def get(self) -> None:
        me = self.caller().id
        self.answer({"chats": [c.public() for c in self.store.chats.values() if me in c.member_ids]})

    def post(self) -> None:
        me = self.caller().id
        body = self.json_body()
        kind, member_ids = body.get("type"), body.get("memberIds")
        if kind not in ("direct", "group"):
            refuse(400, "VALIDATION_FAILED", 'type must be "direct" or "group"')
        if not isinstance(member_ids, list) or not all(isinstance(m, str) for m in member_ids) \
                or len(member_ids) > MAX_MEMBERS:
            refuse(400, "VALIDATION_FAILED", "memberIds must be a list of user ids")
        unknown = [m for m in member_ids if m not in self.store.users]
        if unknown:
            refuse(400, "VALIDATION_FAILED", f"unknown user id(s): {', '.join(unknown[:5])}")
        members = [me, *sorted(set(member_ids) - {me})]
        name = string_field(body, "name", required=False, max_length=100)
        if kind == "direct":
            if len(members) != 2:
                refuse(400, "VALIDATION_FAILED", "a direct chat has exactly one other member")
            existing = self.store.direct_chat(*members)
            if existing is not None:
                return self.answer({"chat": existing.public()})
        self.answer({"chat": self.store.add_chat(kind, members, me, name).public()}, 201)


class ChatHandler(ChatAccess):
    def get(self, chat_id: str) -> None:
        """2xx means a member: the gateway's ``chat:join`` check."""
        self.answer({"chat": self.member_chat(chat_id, self.caller().id).public()})


class MessagesHandler(ChatAccess):
    def get(self) -> None:
        """A page of a chat's messages, newest first; ``before`` is a message id."""
        chat = self.member_chat(self.get_query_argument("chatId", ""), self.caller().id)
        try:
            limit = min(max(int(self.get_query_argument("limit", str(PAGE_DEFAULT))), 1), PAGE_MAX)
        except ValueError:
            refuse(400, "VALIDATION_FAILED", "limit must be an integer")
        history = self.store.chat_messages[chat.id]
        before = self.get_query_argument("before", "")
        end = len(history)
        if before:
            positions = [i for i, m in enumerate(history) if m.id == before]
            if not positions:
                refuse(400, "VALIDATION_FAILED", "before: no such message in this chat")
            end = positions[0]
        page = history[max(end - limit, 0):end][::-1]
        more = end - limit > 0
        self.answer({"messages": [m.public() for m in page], "nextBefore": page[-1].id if page and more else None})

    async def post(self) -> None:
        """``Idempotency-Key`` (the socket's ``clientMessageId``) makes a retry return the same message."""
        me = self.caller().id
        body = self.json_body()
        chat = self.member_chat(str(string_field(body, "chatId")), me)
        text = string_field(body, "text", required=False, max_length=MAX_TEXT)
        media_id = string_field(body, "mediaId", required=False)
        reply_to = string_field(body, "replyToId", required=False)
        if text is None and media_id is None:
            refuse(400, "VALIDATION_FAILED", "a message needs text or mediaId")
        if media_id is not None and media_id not in self.store.media:
            refuse(400, "VALIDATION_FAILED", "mediaId: no such media")
        if reply_to is not None and getattr(self.store.messages.get(reply_to), "chat_id", None) != chat.id:
            refuse(400, "VALIDATION_FAILED", "replyToId: no such message in this chat")
        key = self.request.headers.get("Idempotency-Key") or body.get("clientMessageId")
        if isinstance(key, str) and key:
            earlier = self.store.sent.get((me, chat.id, key))
            if earlier is not None:
                return self.answer({"message": self.store.messages[earlier].public()})
        message = self.store.add_message(chat, me, text, media_id, reply_to)
        if isinstance(key, str) and key:
            self.store.sent[(me, chat.id, key)] = message.id
        await self.notify_offline(chat, message)
        if self.from_client:
            await self.announce("message:new", message)
        self.answer({"message": message.public()}, 201)

    async def notify_offline(self, chat: Chat, message: Message) -> None:
        """A notification for each member the gateway says is offline (``GET /api/presence``)."""
        others = [m for m in chat.member_ids if m != message.sender_id]
        authorization = self.request.headers.get("Authorization")
        if not others or not authorization or not self.ctx.gateway_url:
            return
        url = f"{self.ctx.gateway_url}/api/presence?userIds={quote(','.join(others[:100]))}"
        try:
            response = await self.ctx.announcer.client.fetch(
                HTTPRequest(url, headers={"Authorization": authorization}, request_timeout=5), raise_error=False)
            presence = _json(response.body).get("presence", []) if response.code == 200 else []
        except OSError as exc:
            log.warning("devstack: presence lookup failed: %s", exc)
            return
        for entry in presence:
            if isinstance(entry, dict) and entry.get("status") == "offline":
                self.store.notify(str(entry.get("userId")), message)


class ReadHandler(ChatAccess):
    def post(self) -> None:
        me = self.caller().id
        body = self.json_body()
        chat = self.member_chat(str(string_field(body, "chatId")), me)
        ids = body.get("messageIds")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            refuse(400, "VALIDATION_FAILED", "messageIds must be a list of message ids")
        at = now_iso()
        for message_id in ids:
            message = self.store.messages.get(message_id)
            if message is not None and message.chat_id == chat.id:
                message.read_by.setdefault(me, at)
        for note in self.store.notifications.get(me, []):
            if note.message_id in ids:
                note.read = True
        self.answer({})


class ReactionsHandler(ChatAccess):
    """``PUT {emoji}`` sets the caller's reaction, ``DELETE`` removes it; answers ``{message}``."""

    async def put(self, message_id: str) -> None:
        emoji = string_field(self.json_body(), "emoji", max_length=32)
        await self._react(message_id, emoji)

    async def delete(self, message_id: str) -> None:
        await self._react(message_id, None)

    async def _react(self, message_id: str, emoji: str | None) -> None:
        me = self.caller().id
        message = self.store.messages.get(message_id)
        if message is None or message.deleted:
            refuse(404, "NOT_FOUND", "no such message")
        self.member_chat(message.chat_id, me)
        if emoji is None:
            message.reactions.pop(me, None)
        else:
            message.reactions[me] = emoji
        if self.from_client:
            await self.announce("message:edit", message)
        self.answer({"message": message.public()})


class MessageHandler(ChatAccess):
    """Edit (``PATCH {text}``) or delete by the author, announced to the chat either way."""

    async def patch(self, message_id: str) -> None:
        message = self.own_message(message_id, self.caller().id)
        message.text = string_field(self.json_body(), "text", max_length=MAX_TEXT)
        message.edited_at = now_iso()
        await self.announce("message:edit", message)
        self.answer({"message": message.public()})

    async def delete(self, message_id: str) -> None:
        message = self.own_message(message_id, self.caller().id)
        message.deleted, message.text, message.media_id = True, None, None
        message.reactions.clear()
        await self.announce("message:delete", message)
        self.answer({"message": message.public()})


def _json(body: bytes | None) -> dict[str, Any]:
    try:
        data = codec.loads(body or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def chats_routes(prefix: str) -> list[tuple[str, type]]:
    return [(prefix + "/?", ChatsHandler), (prefix + "/([^/]+)", ChatHandler)]


def messages_routes(prefix: str) -> list[tuple[str, type]]:
    return [(prefix + "/?", MessagesHandler), (prefix + "/read", ReadHandler),
            (prefix + "/([^/]+)/reactions", ReactionsHandler), (prefix + "/([^/]+)", MessageHandler)]
