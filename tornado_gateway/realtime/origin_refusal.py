"""A websocket from a refused origin: told so in the Socket.IO protocol (``connect_error`` with ``data.code``), then closed."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tornado_gateway.codec import dumps

ORIGIN_REFUSED = "ORIGIN_NOT_ALLOWED"
REFUSAL_LINGER = 5.0  # seconds a refused websocket may take to send its CONNECT


def websocket_handshake(request: Any) -> bool:
    """A new websocket connection (not the upgrade of a polling session)."""
    return (request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"
            and "sid" not in request.query_arguments)


class OriginRefusal:
    """The whole conversation with a websocket from a refused origin, in the Socket.IO v5 wire format:
    an Engine.IO open, then ``CONNECT_ERROR {message, data: {code}}`` for the client's CONNECT, then close.
    No engineio session exists and no event is ever read."""

    def __init__(self, handler: Any, max_payload: int) -> None:
        self.handler = handler
        handler.write_message("0" + dumps({"sid": uuid.uuid4().hex, "upgrades": [], "pingInterval": 25000,
                                          "pingTimeout": 20000, "maxPayload": max_payload}))
        self.timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, handler.close, 1008)

    def received(self, message: Any) -> None:
        if isinstance(message, str) and message.startswith("40"):
            refusal = {"message": "origin not allowed",
                       "data": {"code": ORIGIN_REFUSED, "message": "origin not allowed"}}
            self.handler.write_message("44" + dumps(refusal))
        self.timer.cancel()
        self.handler.close(1008)
