"""What every stand-in shares: the JSON handler base, its error shape, and the event announcer.

A stand-in trusts ``X-User-Id`` because only the gateway can reach it and the
gateway always strips the client's copy and sets its own from a verified token.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any, NoReturn

import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tornado_gateway import codec
from tornado_gateway.config import Settings
from tornado_gateway.devstack.store import Store, Tokens, User

log = logging.getLogger("tornado_gateway.devstack")


class Refusal(tornado.web.HTTPError):
    """A 4xx answer with ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(status)
        self.code = code
        self.message = message


def refuse(status: int, code: str, message: str) -> NoReturn:
    raise Refusal(status, code, message)


class Announcer:
    """Tells clients what happened outside sockets: ``POST /internal/events`` on the gateway's internal listener."""

    def __init__(self, url: str, user: str, password: str):
        self.url = url
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._authorization = f"Basic {credentials}"
        self.client = AsyncHTTPClient(force_instance=True)

    async def emit(self, event: str, to: dict[str, Any], data: dict[str, Any]) -> bool:
        body = codec.dumps({"event": event, "to": to, "data": data})
        request = HTTPRequest(self.url, method="POST", body=body, request_timeout=5,
                              headers={"Content-Type": "application/json",
                                       "Authorization": self._authorization})
        try:
            response = await self.client.fetch(request, raise_error=False)
        except OSError as exc:
            log.warning("devstack: event %s not announced: %s", event, exc)
            return False
        if response.code != 202 and not 200 <= response.code < 300:
            log.warning("devstack: event %s not announced: ingress answered %d", event, response.code)
            return False
        return True

    def close(self) -> None:
        self.client.close()


@dataclass
class Context:
    """What the handlers of every stand-in reach through ``self.ctx``."""

    settings: Settings
    store: Store
    tokens: Tokens
    announcer: Announcer
    media_dir: str
    gateway_url: str = ""  # set once the public listener is up
    auth_prefix: str = "/api/auth"  # the public path of the auth service, for the refresh cookie


class ServiceHandler(tornado.web.RequestHandler):
    """JSON in, JSON out; the caller is ``X-User-Id``."""

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.clear_header("Server")

    def caller(self) -> User:
        user_id = self.request.headers.get("X-User-Id")
        if not user_id:
            refuse(401, "UNAUTHENTICATED", "no X-User-Id: this service is reached through the gateway")
        user = self.store.users.get(user_id)
        if user is None:
            refuse(401, "UNAUTHENTICATED", "unknown user")
        return user

    @property
    def from_client(self) -> bool:
        """A client's request proxied by the gateway (it always sets X-Forwarded-For),
        not a call the gateway makes for a socket event (which it fans out itself)."""
        return "X-Forwarded-For" in self.request.headers

    def json_body(self) -> dict[str, Any]:
        try:
            body = codec.loads(self.request.body or b"{}")
        except ValueError:
            refuse(400, "VALIDATION_FAILED", "body is not strict JSON (UTF-8, no NaN, no lone surrogates, "
                                              "at most 64 levels deep)")
        if not isinstance(body, dict):
            refuse(400, "VALIDATION_FAILED", "body must be a JSON object")
        return body

    def answer(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.finish(codec.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, Refusal):
            code, message = exc.code, exc.message
        else:
            code, message = ("INTERNAL" if status_code >= 500 else "VALIDATION_FAILED"), self._reason
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(codec.dumps({"error": {"code": code, "message": message}}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, Refusal):
            super().log_exception(typ, value, tb)


class NotFound(ServiceHandler):
    """Any path a stand-in does not serve: the same JSON error as its other refusals."""

    def prepare(self) -> None:
        refuse(404, "NOT_FOUND", f"no {self.request.method} {self.request.path} on this service")


def string_field(body: dict[str, Any], name: str, *, required: bool = True, max_length: int = 200) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        refuse(400, "VALIDATION_FAILED", f"{name} must be a non-empty string of at most {max_length} characters")
    return value


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The stand-ins' access log, at debug: the gateway's own access log already has the request."""
    request = handler.request
    log.debug("devstack %s %s -> %d", request.method, request.path, handler.get_status(),
              extra={"method": request.method, "path": request.path, "status": handler.get_status()})
