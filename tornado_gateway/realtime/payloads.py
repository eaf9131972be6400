"""Socket.IO payload validation: every client event's payload checked before anything else.

Each ``check_*`` function takes what the client sent and returns a clean dict
(only the known fields, normalised), or raises :class:`EventError` with code
``VALIDATION_FAILED`` naming the field. Limits are module constants and are
listed in the README event reference.
"""

from __future__ import annotations

import re
import time
from typing import Any

from tornado_gateway.codec import Refused

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # chat, message, user, media and client message ids
MAX_TEXT = 4096  # characters of a message text
MAX_NAME = 128  # characters of a chat name
MAX_MEMBERS = 256  # memberIds of one chat:create
MAX_READ_IDS = 100  # messageIds of one message:read
MAX_EMOJI = 16  # characters of a reaction
MAX_TOKEN = 8192


class EventError(Exception):
    """An event failed with an ack code from SPEC §5 (and a message for people)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> EventError:
    return EventError("VALIDATION_FAILED", message)


def _object(payload: Any) -> dict:
    if isinstance(payload, Refused):
        raise invalid(f"payload refused: {payload.reason}")
    if not isinstance(payload, dict):
        raise invalid("payload must be a JSON object")
    return payload


def _id(payload: dict, name: str, required: bool = True) -> str | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise invalid(f"{name} is required")
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not ID_RE.match(value):
        raise invalid(f"{name} must be an id (1-64 of A-Z a-z 0-9 _ -)")
    return value


def _id_list(payload: dict, name: str, max_count: int) -> list[str]:
    values = payload.get(name)
    if not isinstance(values, list):
        raise invalid(f"{name} must be an array of ids")
    if not values or len(values) > max_count:
        raise invalid(f"{name} must hold 1 to {max_count} ids")
    out: list[str] = []
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not ID_RE.match(value):
            raise invalid(f"{name} must hold ids (1-64 of A-Z a-z 0-9 _ -)")
        if value not in out:
            out.append(value)
    return out


def _text(payload: dict, name: str, max_length: int, required: bool = False) -> str | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise invalid(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string")
    if len(value) > max_length:
        raise invalid(f"{name} is longer than {max_length} characters")
    return value


def check_auth_hello(payload: Any) -> str:
    payload = _object(payload)
    token = payload.get("token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        raise invalid("token must be a non-empty string")
    return token


def check_chat_id(payload: Any) -> dict:
    """chat:join, chat:leave, typing:start, typing:stop."""
    return {"chatId": _id(_object(payload), "chatId")}


def check_chat_create(payload: Any) -> dict:
    payload = _object(payload)
    kind = payload.get("type")
    if kind not in ("direct", "group"):
        raise invalid('type must be "direct" or "group"')
    members = _id_list(payload, "memberIds", MAX_MEMBERS)
    if kind == "direct" and len(members) != 1:
        raise invalid("a direct chat takes exactly one memberId (the other person)")
    name = _text(payload, "name", MAX_NAME)
    out = {"type": kind, "memberIds": members}
    if name is not None:
        out["name"] = name
    return out


def check_message_send(payload: Any) -> dict:
    payload = _object(payload)
    out = {"chatId": _id(payload, "chatId"), "clientMessageId": _id(payload, "clientMessageId")}
    text = _text(payload, "text", MAX_TEXT)
    media = _id(payload, "mediaId", required=False)
    reply = _id(payload, "replyToId", required=False)
    if (text is None or not text.strip()) and media is None:
        raise invalid("a message needs a non-empty text or a mediaId")
    for name, value in (("text", text), ("mediaId", media), ("replyToId", reply)):
        if value is not None:
            out[name] = value
    return out


def check_message_read(payload: Any) -> dict:
    payload = _object(payload)
    return {"chatId": _id(payload, "chatId"), "messageIds": _id_list(payload, "messageIds", MAX_READ_IDS)}


def check_reaction_set(payload: Any) -> dict:
    payload = _object(payload)
    out = {"chatId": _id(payload, "chatId"), "messageId": _id(payload, "messageId")}
    if "emoji" not in payload:
        raise invalid("emoji is required (a string, or null to remove the reaction)")
    emoji = payload["emoji"]
    if emoji is not None and (not isinstance(emoji, str) or not emoji.strip() or len(emoji) > MAX_EMOJI):
        raise invalid(f"emoji must be a non-empty string of at most {MAX_EMOJI} characters, or null")
    out["emoji"] = emoji
    return out


def check_user_ids(raw: str | None, max_count: int = 100) -> list[str]:
    """``userIds=a,b`` of GET /api/presence."""
    ids = [part.strip() for part in (raw or "").split(",") if part.strip()]
    if not ids or len(ids) > max_count:
        raise invalid(f"userIds must list 1 to {max_count} comma-separated ids")
    for user_id in ids:
        if not ID_RE.match(user_id):
            raise invalid("userIds must be ids (1-64 of A-Z a-z 0-9 _ -)")
    return list(dict.fromkeys(ids))


def iso_time(epoch: float | None = None) -> str:
    """``2026-11-23T22:48:52.123Z`` for ``epoch`` (default now)."""
    epoch = time.time() if epoch is None else epoch
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"
