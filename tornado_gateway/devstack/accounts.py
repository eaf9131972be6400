"""The auth and users stand-ins: register, login, refresh; users by id, ``me`` and search."""

from __future__ import annotations

import re

from tornado_gateway.devstack.store import REFRESH_TTL, User
from tornado_gateway.devstack.web import ServiceHandler, refuse, string_field

USERNAME = re.compile(r"[a-z0-9_.-]{3,32}")
MIN_PASSWORD = 8
SEARCH_LIMIT = 50


class AuthHandler(ServiceHandler):
    """Answers ``{user, accessToken, refreshToken}`` and sets the ``refreshToken`` cookie."""

    def signed_in(self, user: User, status: int = 200) -> None:
        tokens = self.ctx.tokens.pair(user.id)
        self.set_cookie("refreshToken", tokens["refreshToken"], path=self.ctx.auth_prefix,
                        httponly=True, samesite="Lax", max_age=int(REFRESH_TTL))
        self.answer({"user": user.public(), **tokens}, status)


class RegisterHandler(AuthHandler):
    def post(self) -> None:
        body = self.json_body()
        username = str(string_field(body, "username", max_length=32)).strip().lower()
        password = body.get("password")
        if not USERNAME.fullmatch(username):
            refuse(400, "VALIDATION_FAILED", "username: 3 to 32 of a-z 0-9 _ . -")
        if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= 200:
            refuse(400, "VALIDATION_FAILED", f"password: {MIN_PASSWORD} to 200 characters")
        display = string_field(body, "displayName", required=False, max_length=64)
        if username in self.store.by_username:
            refuse(409, "CONFLICT", "username taken")
        self.signed_in(self.store.add_user(username, password, display), 201)


class LoginHandler(AuthHandler):
    def post(self) -> None:
        body = self.json_body()
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            refuse(400, "VALIDATION_FAILED", "username and password are required")
        user = self.store.check_password(username.strip(), password)
        if user is None:
            refuse(401, "INVALID_CREDENTIALS", "wrong username or password")
        self.signed_in(user)


class RefreshHandler(AuthHandler):
    """A new pair for a valid refresh token: the cookie, ``{"refreshToken"}`` in the body, or Bearer."""

    def post(self) -> None:
        token = self.get_cookie("refreshToken")
        if not token and self.request.body:
            candidate = self.json_body().get("refreshToken")
            token = candidate if isinstance(candidate, str) else None
        header = self.request.headers.get("Authorization", "")
        if not token and header.lower().startswith("bearer "):
            token = header[7:].strip()
        if not token:
            refuse(401, "UNAUTHENTICATED", "no refresh token (cookie refreshToken, body or Bearer)")
        user_id = self.ctx.tokens.refresh_subject(token)
        user = self.store.users.get(user_id or "")
        if user is None:
            refuse(401, "INVALID_TOKEN", "invalid or expired refresh token")
        self.signed_in(user)


class MeHandler(ServiceHandler):
    def get(self) -> None:
        self.answer({"user": self.caller().public()})


class UserHandler(ServiceHandler):
    def get(self, user_id: str) -> None:
        self.caller()
        user = self.store.users.get(user_id)
        if user is None:
            refuse(404, "NOT_FOUND", "no such user")
        self.answer({"user": user.public()})


class UsersHandler(ServiceHandler):
    """``?search=`` matches username or display name, case-insensitively."""

    def get(self) -> None:
        self.caller()
        term = self.get_query_argument("search", "").strip().lower()
        found = [u.public() for u in self.store.users.values()
                 if term in u.username.lower() or term in u.display_name.lower()]
        self.answer({"users": found[:SEARCH_LIMIT]})


def auth_routes(prefix: str) -> list[tuple[str, type]]:
    return [(prefix + "/register", RegisterHandler), (prefix + "/login", LoginHandler),
            (prefix + "/refresh", RefreshHandler)]


def users_routes(prefix: str) -> list[tuple[str, type]]:
    return [(prefix + "/?", UsersHandler), (prefix + "/me", MeHandler), (prefix + "/([^/]+)", UserHandler)]
