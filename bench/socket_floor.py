"""The Socket.IO floor: a bare Tornado websocket handler on uvloop, one process, speaking just
enough Engine.IO/Socket.IO for the bench's storm and idle clients (open packet, CONNECT
answer, an ack to every event); no JWT, Redis, upstream call, engineio or socketio.

    PORT=8080 python bench/socket_floor.py [--raw]

``bench/socket_bench.py --targets gateway,node,floor`` runs it beside the others: what
Tornado's websocket server alone costs per handshake on the same machine, the part of the
gateway's figure that no change above Tornado can remove. ``--raw`` (the ``raw`` target)
answers the same without Tornado: an asyncio protocol on uvloop that reads the upgrade's
head, writes the 101 and frames by hand (unfragmented text frames only; enough for the
bench's clients, not a websocket server): what a wire path below Tornado could cost at best.
"""

import asyncio
import base64
import hashlib
import json
import os
import sys

import tornado.web
import tornado.websocket
import uvloop


def _sid() -> str:
    return base64.urlsafe_b64encode(os.urandom(15)).decode()


def open_packet() -> str:
    return ('0{"sid":"%s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,'
            '"maxPayload":1000000}' % _sid())


def answer(text: str) -> str | None:
    """The answer to a client's packet: CONNECT's, or an ack of an event; None for the rest."""
    if text.startswith("40"):
        return '40{"sid":"%s"}' % _sid()
    if text.startswith("42"):  # 42<ack id>["event", data]: answered {"ok": true, "data": data}
        end = 2
        while text[end].isdigit():
            end += 1
        event = json.loads(text[end:])
        return "43%s[%s]" % (text[2:end], json.dumps({"ok": True, "data": event[1]}))
    return None


class Socket(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def open(self) -> None:
        self.write_message(open_packet())

    def on_message(self, message: str | bytes) -> None:
        reply = answer(message if isinstance(message, str) else message.decode())
        if reply is not None:
            self.write_message(reply)


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _frame(text: str, opcode: int = 0x1) -> bytes:
    data = text.encode()
    n = len(data)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + data


class RawSocket(asyncio.Protocol):
    """One client without Tornado: the upgrade's head, then masked frames in, frames out."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded and not self._upgrade():
            return
        out = []
        while len(self.buffer) >= 2:
            first, second = self.buffer[0], self.buffer[1]
            length, at = second & 0x7F, 2
            if length >= 126:
                at += 2 if length == 126 else 8
                if len(self.buffer) < at:
                    break
                length = int.from_bytes(self.buffer[2:at], "big")
            masked = second & 0x80  # always, from a client
            mask = self.buffer[at:at + 4]
            at += 4 if masked else 0
            if len(self.buffer) < at + length:
                break
            payload = self.buffer[at:at + length]
            self.buffer = self.buffer[at + length:]
            if masked:
                key = (mask * (length // 4 + 1))[:length]
                payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
            opcode = first & 0x0F
            if opcode == 0x8:  # close: answered, then the connection ends
                out.append(_frame("", 0x8))
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            if opcode == 0x1:
                reply = answer(payload.decode())
                if reply is not None:
                    out.append(_frame(reply))
        if out:
            self.transport.write(b"".join(out))

    def _upgrade(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        key = None
        for line in self.buffer[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        self.buffer = self.buffer[end + 4:]
        if key is None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return False
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + _frame(open_packet()))
        self.upgraded = True
        return True


async def main() -> None:
    # both floors listen with the gateway's backlog: Tornado's default of 128 overflows in a
    # storm of 1,000, and the clients whose SYN was dropped retry a second later
    port = int(os.environ["PORT"])
    if "--raw" in sys.argv[1:]:
        await asyncio.get_running_loop().create_server(RawSocket, "127.0.0.1", port, backlog=1024)
    else:
        tornado.web.Application([(r"/socket.io/", Socket)]).listen(port, "127.0.0.1", backlog=1024)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main())
