"""The Socket.IO floor: a bare Tornado websocket handler on uvloop, one process, speaking just
enough Engine.IO/Socket.IO for the bench's storm and idle clients (open packet, CONNECT
answer, an ack to every event); no JWT, Redis, upstream call, engineio or socketio.

    PORT=8080 python bench/socket_floor.py

``bench/socket_bench.py --targets gateway,node,floor`` runs it beside the others: what
Tornado's websocket server alone costs per handshake on the same machine, the part of the
gateway's figure that no change above Tornado can remove.
"""

import asyncio
import json
import os
import base64

import tornado.web
import tornado.websocket
import uvloop


def _sid() -> str:
    return base64.urlsafe_b64encode(os.urandom(15)).decode()


class Socket(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def open(self) -> None:
        self.write_message('0{"sid":"%s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,'
                           '"maxPayload":1000000}' % _sid())

    def on_message(self, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode()
        if text.startswith("40"):
            self.write_message('40{"sid":"%s"}' % _sid())
        elif text.startswith("42"):  # 42<ack id>["event", data]: answered {"ok": true, "data": data}
            end = 2
            while text[end].isdigit():
                end += 1
            event = json.loads(text[end:])
            self.write_message("43%s[%s]" % (text[2:end], json.dumps({"ok": True, "data": event[1]})))


async def main() -> None:
    tornado.web.Application([(r"/socket.io/", Socket)]).listen(int(os.environ["PORT"]), "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main())
