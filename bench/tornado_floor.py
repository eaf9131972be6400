"""The floor: a bare Tornado handler answering the same JSON, uvloop, one process.

    python bench/tornado_floor.py PORT

``bench/http.sh`` measures its CPU per request beside the gateway's, so the
gateway's figure can be read against what Tornado's HTTP server alone costs on
the same machine under the same load.
"""

import asyncio
import sys

import tornado.web
import uvloop
from tornado.httpserver import HTTPServer

BODY = b'{"id":"42","name":"bench","email":"bench@example.com"}'


class Answer(tornado.web.RequestHandler):
    def get(self, *args):
        self.set_header("Content-Type", "application/json")
        self.write(BODY)


async def main(port: int) -> None:
    HTTPServer(tornado.web.Application([(r"/.*", Answer)])).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main(int(sys.argv[1])))
