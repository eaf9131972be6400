"""A fast stub of the chats and messages services for bench/socket_bench.py (one port).

A bare asyncio protocol (uvloop when installed) instead of a Tornado
application, so the stub costs tens of microseconds per request and the
benchmark measures the gateway rather than its upstream:
any ``GET`` answers 200 (a chat: every user is a member), ``POST`` of a
path ending in ``/messages`` (or ``/``) 201 with a new message id. Keep-alive,
Content-Length bodies only.
"""

import asyncio
import itertools
import json
import sys
import time

IDS = itertools.count(1)


class StubProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", 0))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            method, path = head[0].split(" ")[:2]
            self.answer(method, path, headers, body)

    def answer(self, method, path, headers, body):
        if method == "GET":
            status, data = "200 OK", {"chat": {"id": path.rsplit("/", 1)[-1], "type": "group"}}
        elif method == "POST" and (path.endswith("/messages") or path == "/"):
            sent = json.loads(body)
            status, data = "201 Created", {"message": {
                "id": f"m{next(IDS)}", "chatId": sent["chatId"], "senderId": headers.get("x-user-id"),
                "text": sent.get("text"), "createdAt": time.time()}}
        else:
            status, data = "404 Not Found", {"error": {"message": "not here"}}
        payload = json.dumps(data).encode()
        self.transport.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (status.encode(), len(payload), payload))


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(StubProtocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(int(sys.argv[1])))
