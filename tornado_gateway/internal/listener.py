"""The internal listener: ``POST /internal/events``, ``GET /metrics``, ``GET /healthz``, ``GET /readyz``.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from typing import cast

import tornado.web
from tornado.auth import AuthError
from tornado.http1connection import HTTP1Connection
from tornado_http_auth import DigestAuthMixin

from tornado_gateway import metrics, tornado_compat
from tornado_gateway.edge.handlers import HealthHandler, ReadyHandler
from tornado_gateway.internal.ingress import InvalidEvent, event_name, parse_event
from tornado_gateway.errors import GatewayError
from tornado_gateway.edge.responses import GatewayHandler, finish_error
from tornado_gateway.config.settings import Settings

log = logging.getLogger("tornado_gateway.internal")

REALM = "tornado_gateway internal"


class InternalCredentials:
    """The listener's user, password and Digest signing key."""

    def __init__(self, user: str, password: str, key: str) -> None:
        self.user = user.encode()
        self.password = password
        self.configured = bool(user and password)
        self.digest_key = key.encode() if key else binascii.hexlify(os.urandom(32))

    @classmethod
    def from_settings(cls, settings: Settings) -> "InternalCredentials":
        return cls(settings.internal_auth_user, settings.internal_auth_password,
                   settings.internal_auth_key)

    def matches(self, user: str, password: str) -> bool:
        user_ok = hmac.compare_digest(user.encode(), self.user)
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return user_ok and password_ok


class InternalHandler(DigestAuthMixin, GatewayHandler):
    """Base of the authenticated internal endpoints: checks credentials in ``prepare``."""

    route_name = "internal"

    def initialize(self, credentials: InternalCredentials) -> None:
        self.credentials = credentials
        self.DIGEST_PRIVATE_KEY = credentials.digest_key  # instance attribute: never the default

    def prepare(self) -> None:
        if not self.credentials.configured:
            raise GatewayError("FORBIDDEN", "the internal listener has no credentials configured "
                               "(set INTERNAL_AUTH_USER and INTERNAL_AUTH_PASSWORD)")
        header = self.request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            authenticated = self._basic_ok(header)
        elif header.startswith("Digest "):
            authenticated = self._digest_ok(header)
        else:
            authenticated = False
        if not authenticated:
            self._challenge("credentials required" if not header else "invalid credentials")

    def _basic_ok(self, header: str) -> bool:
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        user, colon, password = decoded.partition(":")
        return bool(colon) and self.credentials.matches(user, password)

    def _digest_ok(self, header: str) -> bool:
        params = self.parse_auth_header(header)
        try:
            self.verify_params(params)
            self.verify_opaque(params["opaque"], params["nonce"], self.request.remote_ip)
        except (AuthError, ValueError, KeyError):
            return False
        if (params.get("realm") != REALM or params.get("qop") != "auth"
                or params.get("uri") != self.request.uri
                or params.get("algorithm", "MD5").lower() not in ("md5", "md5-sess")
                or not all(params.get(k) for k in ("response", "nc", "cnonce"))):
            return False
        try:
            expected = self.calculate_expected_response(self.credentials.password, params)
        except (UnicodeError, ValueError):
            return False
        user_ok = hmac.compare_digest(params["username"].encode(), self.credentials.user)
        response_ok = hmac.compare_digest(expected.encode(), params["response"].encode())
        return user_ok and response_ok

    def verify_opaque(self, opaque: str, nonce: str, clientip: str | None) -> bool:
        """The library's check, with a constant-time signature comparison."""
        received_digest, _, received_ekey = opaque.partition("-")
        try:
            received_key = base64.b64decode(received_ekey).decode("ascii")
            received_nonce, received_ip, received_time_text = received_key.split(",")
            received_time = int(received_time_text)
        except (ValueError, UnicodeError):
            raise AuthError("invalid opaque") from None
        if received_nonce != nonce or received_ip != clientip:
            raise AuthError("opaque does not match")
        if time.time() - received_time > self.DIGEST_CHALLENGE_TIMEOUT_SECONDS:
            raise AuthError("challenge expired")
        digest = hashlib.md5(received_key.encode("ascii") + self.DIGEST_PRIVATE_KEY).hexdigest()
        if not hmac.compare_digest(received_digest.encode(), digest.encode()):
            raise AuthError("invalid opaque")
        return True

    def _challenge(self, message: str) -> None:
        self.clear()
        self.set_status(401)
        self.set_header("WWW-Authenticate",
                        self.create_auth_challenge(REALM, self.request.remote_ip, int(time.time())))
        self.add_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
        finish_error(self, GatewayError("UNAUTHENTICATED", message, 401), self.request_id)


class MetricsHandler(InternalHandler):
    """``GET /metrics``: this process's Prometheus metrics."""

    route_name = "metrics"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(metrics.REGISTRY))


# -- POST /internal/events ----------------------------------------------------

@tornado.web.stream_request_body
class EventsHandler(InternalHandler):
    """``POST /internal/events``: validate, then fan out; 202 when accepted."""

    route_name = "internal_events"

    def prepare(self) -> None:
        super().prepare()
        if tornado_compat.handler_finished(self):
            return
        if self.request.method != "POST":
            raise GatewayError("METHOD_NOT_ALLOWED", "only POST is accepted here",
                               headers={"Allow": "POST"})
        self.max_size = self.gateway.ingress.max_size
        self.body = bytearray()
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_size:
            raise GatewayError("PAYLOAD_TOO_LARGE", f"event body larger than {self.max_size} bytes")
        cast(HTTP1Connection, self.request.connection).set_max_body_size(self.max_size + 1)

    def data_received(self, chunk: bytes) -> None:
        if tornado_compat.handler_finished(self):
            return
        self.body += chunk
        if len(self.body) > self.max_size:
            self.send_gateway_error(GatewayError(
                "PAYLOAD_TOO_LARGE", f"event body larger than {self.max_size} bytes"))

    async def post(self) -> None:
        if tornado_compat.handler_finished(self):
            return
        try:
            message = parse_event(bytes(self.body), self.max_size)
        except InvalidEvent as exc:
            metrics.EVENTS_REJECTED.labels("http").inc()
            raise GatewayError("VALIDATION_FAILED", str(exc)) from None
        metrics.EVENTS_IN.labels(event_name(message), "http").inc()
        await self.gateway.ingress.submit(message)
        self.write_json(202, {"accepted": True, "event": event_name(message)})


def internal_handlers(settings: Settings) -> list:
    """The internal listener's routes (``/healthz`` needs no credentials)."""
    credentials = InternalCredentials.from_settings(settings)
    if settings.internal_port and not credentials.configured:
        log.warning("internal listener %s:%d has no INTERNAL_AUTH_USER/INTERNAL_AUTH_PASSWORD: "
                    "it refuses /internal/events and /metrics", settings.internal_host,
                    settings.internal_port)
    return [
        (r"/healthz", HealthHandler),
        # Readiness here too: it stays reachable while the public listener drains.
        (r"/readyz", ReadyHandler),
        (r"/internal/events", EventsHandler, {"credentials": credentials}),
        (r"/metrics", MetricsHandler, {"credentials": credentials}),
    ]


__all__ = ["EventsHandler", "InternalCredentials", "InternalHandler", "MetricsHandler", "internal_handlers"]
