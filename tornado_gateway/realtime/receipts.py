"""Delivered receipts: a device's ack of ``message:new`` becomes ``receipt:delivered`` for the sender.

Acks are batched per loop turn; ``ReceiptMarks`` keeps each (message, recipient) pair to
one receipt across the cluster (docs/design-notes.md, "Dedupe").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Protocol

from tornado_gateway.realtime.dedupe import ReceiptMarks
from tornado_gateway.realtime.payloads import iso_time

log = logging.getLogger("tornado_gateway.realtime")


class ReceiptEmitter(Protocol):
    def emit_each_now(self, event: str, items: list[tuple[Any, Any]]) -> None: ...


class DeliveredReceipts:
    """``acked(sid, data)`` queues a receipt; one task sends each batch, first receipts only."""

    def __init__(self, marks: ReceiptMarks, emitter: ReceiptEmitter,
                 user_of: Callable[[str], str | None]) -> None:
        self.marks = marks
        self.emitter = emitter
        self.user_of = user_of  # sid -> the authenticated user of that socket, or None
        self._queued: list[tuple[str, Any, str, str]] = []
        self._flush: asyncio.Task | None = None

    def acked(self, sid: str, data: Any, *ack_args: Any) -> None:
        """A device acked ``message:new``: queue a delivered receipt for the sender."""
        recipient = self.user_of(sid)
        message = data.get("message") if isinstance(data, dict) else None
        if recipient is None or not isinstance(message, dict):
            return
        sender = sender_of(message)
        message_id = message.get("id")
        if sender is None or message_id is None or sender == recipient:
            return
        self._queued.append((str(message_id), message.get("chatId"), sender, recipient))
        if self._flush is None:
            self._flush = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                by_pair = {(m, r): (m, c, s, r) for m, c, s, r in batch}
                at = iso_time()
                receipts = []
                for pair in await self.marks.first(list(by_pair)):
                    message_id, chat_id, sender, recipient = by_pair[pair]
                    receipts.append(("user:" + sender, {"chatId": chat_id, "messageId": message_id,
                                                        "userId": recipient, "at": at}))
                self.emitter.emit_each_now("receipt:delivered", receipts)
        except Exception:
            log.exception("delivered receipts failed")
        finally:
            self._flush = None


def sender_of(message: dict) -> str | None:
    """The sender's user id of a ``message:new`` payload (``senderId``, ``sender`` or ``sender.id``)."""
    sender = message.get("senderId", message.get("sender"))
    if isinstance(sender, dict):
        sender = sender.get("id")
    if isinstance(sender, int) and not isinstance(sender, bool):
        sender = str(sender)
    return sender if isinstance(sender, str) and sender else None
