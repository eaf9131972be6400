"""The media and notifications stand-ins: bytes streamed to and from a temporary directory; a user's notifications."""

from __future__ import annotations

import os
import uuid
from typing import BinaryIO

import tornado.web

from tornado_gateway.devstack.store import Media
from tornado_gateway.devstack.web import ServiceHandler, refuse

CHUNK = 64 * 1024
CONTENT_TYPE_MAX = 200


@tornado.web.stream_request_body
class UploadHandler(ServiceHandler):
    """``POST`` a raw body with its ``Content-Type``; written to disk as it arrives, never held whole."""

    _file: BinaryIO | None = None
    _path = ""
    _size = 0

    def prepare(self) -> None:
        if self.request.method != "POST":
            return
        self.owner = self.caller().id
        self.media_id = uuid.uuid4().hex
        self._path = os.path.join(self.ctx.media_dir, self.media_id)
        self._file = open(self._path, "wb")  # noqa: SIM115 - closed in post() or on_connection_close()

    def data_received(self, chunk: bytes) -> None:
        if self._file is not None:
            self._file.write(chunk)
            self._size += len(chunk)

    def post(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        content_type = self.request.headers.get("Content-Type", "application/octet-stream")[:CONTENT_TYPE_MAX]
        media = Media(self.media_id, self.owner, content_type, self._size, self._path)
        self.store.media[media.id] = media
        self.answer({"media": media.public()}, 201)

    def on_connection_close(self) -> None:
        """An upload cut short leaves nothing behind."""
        if self._file is not None:
            self._file.close()
            self._file = None
            os.unlink(self._path)


class DownloadHandler(ServiceHandler):
    """``GET``/``HEAD`` the bytes back, a chunk at a time, each written only when the last one left."""

    async def get(self, media_id: str) -> None:
        media = self._media(media_id)
        if self.request.method == "HEAD":
            return
        with open(media.path, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                self.write(chunk)
                await self.flush()  # backpressure: wait until the gateway took it
        self.finish()

    async def head(self, media_id: str) -> None:
        await self.get(media_id)

    def _media(self, media_id: str) -> Media:
        self.caller()
        media = self.store.media.get(media_id)
        if media is None:
            refuse(404, "NOT_FOUND", "no such media")
        self.set_header("Content-Type", media.content_type)
        self.set_header("Content-Length", str(media.size))
        self.set_header("Cache-Control", "private, max-age=3600")
        return media


class NotificationsHandler(ServiceHandler):
    """The caller's notifications, newest first (a message in one of their chats while they were offline)."""

    def get(self) -> None:
        notes = self.store.notifications.get(self.caller().id, [])
        self.answer({"notifications": [n.public() for n in reversed(notes)]})


def media_routes(prefix: str) -> list[tuple[str, type]]:
    return [(prefix + "/?", UploadHandler), (prefix + "/([^/]+)", DownloadHandler)]


def notifications_routes(prefix: str) -> list[tuple[str, type]]:
    return [(prefix + "/?", NotificationsHandler)]
