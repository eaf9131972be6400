"""The devstack's data, in memory: users, chats, messages, media records, notifications; and its JWTs."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import time
import uuid
from dataclasses import dataclass, field

import jwt

from tornado_gateway.config import Settings

SEED_PASSWORD = "devstack"
SEED_USERS = (("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol"))
GROUP_CHAT_ID = "c1"
ACCESS_TTL = 15 * 60.0
REFRESH_TTL = 7 * 86400.0
_HASH_ROUNDS = 20_000  # devstack only: fast enough not to stall the shared event loop


def now_iso() -> str:
    """The current time as RFC 3339 UTC with milliseconds."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


@dataclass
class User:
    id: str
    username: str
    display_name: str
    salt: bytes = field(repr=False)
    password_hash: bytes = field(repr=False)

    def public(self) -> dict:
        return {"id": self.id, "username": self.username, "displayName": self.display_name}


@dataclass
class Chat:
    id: str
    type: str
    name: str | None
    member_ids: list[str]
    created_by: str
    created_at: str = field(default_factory=now_iso)

    def public(self) -> dict:
        return {"id": self.id, "type": self.type, "name": self.name, "memberIds": list(self.member_ids),
                "createdBy": self.created_by, "createdAt": self.created_at}


@dataclass
class Message:
    id: str
    chat_id: str
    sender_id: str
    text: str | None
    media_id: str | None = None
    reply_to_id: str | None = None
    created_at: str = field(default_factory=now_iso)
    edited_at: str | None = None
    deleted: bool = False
    reactions: dict[str, str] = field(default_factory=dict)
    read_by: dict[str, str] = field(default_factory=dict)

    def public(self) -> dict:
        return {"id": self.id, "chatId": self.chat_id, "senderId": self.sender_id, "text": self.text,
                "mediaId": self.media_id, "replyToId": self.reply_to_id, "createdAt": self.created_at,
                "editedAt": self.edited_at, "deleted": self.deleted, "reactions": dict(self.reactions)}


@dataclass
class Media:
    id: str
    owner_id: str
    content_type: str
    size: int
    path: str = field(repr=False)

    def public(self) -> dict:
        return {"id": self.id, "size": self.size, "contentType": self.content_type}


@dataclass
class Notification:
    id: str
    user_id: str
    chat_id: str
    message_id: str
    sender_id: str
    preview: str
    created_at: str = field(default_factory=now_iso)
    read: bool = False

    def public(self) -> dict:
        return {"id": self.id, "type": "message", "chatId": self.chat_id, "messageId": self.message_id,
                "senderId": self.sender_id, "preview": self.preview, "createdAt": self.created_at,
                "read": self.read}


class Store:
    """Everything the stand-ins know; lost when the process ends."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.by_username: dict[str, User] = {}
        self.chats: dict[str, Chat] = {}
        self.messages: dict[str, Message] = {}
        self.chat_messages: dict[str, list[Message]] = {}
        self.sent: dict[tuple[str, str, str], str] = {}  # (user, chat, idempotency key) -> message id
        self.media: dict[str, Media] = {}
        self.notifications: dict[str, list[Notification]] = {}
        self._ids = {kind: itertools.count(1) for kind in ("u", "c", "m", "n")}

    def next_id(self, kind: str) -> str:
        return f"{kind}{next(self._ids[kind])}"

    # -- users ---------------------------------------------------------------

    def add_user(self, username: str, password: str, display_name: str | None = None) -> User:
        salt = os.urandom(16)
        user = User(self.next_id("u"), username, display_name or username, salt, _hash(password, salt))
        self.users[user.id] = user
        self.by_username[username.lower()] = user
        return user

    def check_password(self, username: str, password: str) -> User | None:
        user = self.by_username.get(username.lower())
        if user is None:
            _hash(password, b"\0" * 16)  # the same work either way
            return None
        return user if hmac.compare_digest(_hash(password, user.salt), user.password_hash) else None

    # -- chats and messages ----------------------------------------------------

    def add_chat(self, kind: str, members: list[str], created_by: str, name: str | None = None) -> Chat:
        chat = Chat(self.next_id("c"), kind, name, members, created_by)
        self.chats[chat.id] = chat
        self.chat_messages[chat.id] = []
        return chat

    def direct_chat(self, a: str, b: str) -> Chat | None:
        pair = sorted((a, b))
        for chat in self.chats.values():
            if chat.type == "direct" and sorted(chat.member_ids) == pair:
                return chat
        return None

    def add_message(self, chat: Chat, sender: str, text: str | None, media_id: str | None = None,
                    reply_to_id: str | None = None) -> Message:
        message = Message(self.next_id("m"), chat.id, sender, text, media_id, reply_to_id)
        self.messages[message.id] = message
        self.chat_messages[chat.id].append(message)
        return message

    def notify(self, user_id: str, message: Message) -> Notification:
        preview = (message.text or "[media]")[:80]
        note = Notification(self.next_id("n"), user_id, message.chat_id, message.id, message.sender_id, preview)
        self.notifications.setdefault(user_id, []).append(note)
        return note

    # -- the seed ----------------------------------------------------------------

    def seed(self) -> None:
        """alice, bob and carol (password ``devstack``) in one group chat, ``c1``."""
        users = [self.add_user(name, SEED_PASSWORD, display) for name, display in SEED_USERS]
        ids = [u.id for u in users]
        chat = self.add_chat("group", ids, ids[0], "Devstack group")
        assert chat.id == GROUP_CHAT_ID
        self.add_message(chat, ids[0], "Welcome to the devstack group!")


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8", "surrogatepass"), salt, _HASH_ROUNDS)


class Tokens:
    """Access and refresh JWTs signed with the gateway's own secrets, as a real auth service would."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.algorithm = settings.jwt_algorithms[0]

    def _sign(self, user_id: str, kind: str, secret: str, ttl: float) -> str:
        now = int(time.time())
        claims: dict[str, object] = {"sub": user_id, "type": kind, "iat": now, "exp": now + int(ttl),
                                     "jti": uuid.uuid4().hex}
        if self.settings.jwt_issuer:
            claims["iss"] = self.settings.jwt_issuer
        if self.settings.jwt_audience:
            claims["aud"] = self.settings.jwt_audience
        return jwt.encode(claims, secret, algorithm=self.algorithm)

    def access(self, user_id: str, ttl: float = ACCESS_TTL) -> str:
        return self._sign(user_id, "access", self.settings.jwt_access_secret, ttl)

    def pair(self, user_id: str) -> dict[str, str]:
        return {"accessToken": self.access(user_id),
                "refreshToken": self._sign(user_id, "refresh", self.settings.jwt_refresh_secret, REFRESH_TTL)}

    def refresh_subject(self, token: str) -> str | None:
        """The user id of a valid refresh token, else None."""
        try:
            claims = jwt.decode(token, self.settings.jwt_refresh_secret, algorithms=[self.algorithm],
                                options={"require": ["exp", "sub"]}, issuer=self.settings.jwt_issuer or None,
                                audience=self.settings.jwt_audience or None,
                                leeway=self.settings.jwt_leeway)
        except jwt.PyJWTError:
            return None
        if claims.get("type") != "refresh" or not isinstance(claims.get("sub"), str):
            return None
        return claims["sub"]
