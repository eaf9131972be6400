"""A minimal streaming Tornado proxy, to measure upstream clients without the gateway.

    python bench/standalone_proxy.py PORT UPSTREAM_BASE [pooled|simple]

Every request is forwarded to UPSTREAM_BASE + path with the same body/response
streaming the gateway uses (coroutine streaming_callback, body_producer), so
``bench/http.sh`` can compare the pooled client with SimpleAsyncHTTPClient.
"""

import asyncio
import sys

import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.simple_httpclient import SimpleAsyncHTTPClient

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from tornado_gateway.upstream.client import PooledHTTPClient  # noqa: E402

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer",
       "proxy-authorization", "proxy-authenticate", "content-length", "server", "date"}


@tornado.web.stream_request_body
class Proxy(tornado.web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")

    def prepare(self):
        self.request.connection.set_max_body_size(1 << 40)
        self.body_queue = asyncio.Queue(maxsize=1)
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in HOP}
        length = self.request.headers.get("Content-Length")
        if length is not None:
            headers["Content-Length"] = length
        has_body = self.request.method in ("POST", "PUT", "PATCH")
        self.upstream = self.settings["client"].fetch(HTTPRequest(
            self.settings["base"] + self.request.uri, self.request.method, headers,
            body_producer=self.produce if has_body else None,
            streaming_callback=self.relay, header_callback=self.on_header,
            connect_timeout=2, request_timeout=600, follow_redirects=False,
            decompress_response=False, allow_nonstandard_methods=True), raise_error=False)
        self.status_set = False

    async def data_received(self, chunk):
        await self.body_queue.put(chunk)

    async def produce(self, write):
        while True:
            chunk = await self.body_queue.get()
            if chunk is None:
                return
            await write(chunk)

    def on_header(self, line):
        if line.startswith("HTTP/"):
            self.set_status(int(line.split(" ", 2)[1]))
        elif ":" in line:
            name, value = line.split(":", 1)
            if name.lower() not in HOP or name.lower() == "content-length":
                self.set_header(name, value.strip())

    async def relay(self, chunk):
        self.write(chunk)
        await self.flush()

    async def _forward(self):
        if self.request.method in ("POST", "PUT", "PATCH"):
            await self.body_queue.put(None)
        response = await self.upstream
        self.set_status(response.code)
        self.finish()

    get = head = delete = _forward

    async def post(self):
        await self._forward()

    put = patch = post


async def main():
    port, base = int(sys.argv[1]), sys.argv[2]
    kind = sys.argv[3] if len(sys.argv) > 3 else "pooled"
    if kind == "simple":
        client = SimpleAsyncHTTPClient(force_instance=True, max_clients=1000,
                                       max_body_size=1 << 40)
    else:
        client = PooledHTTPClient(force_instance=True)
    app = tornado.web.Application([(r"/.*", Proxy)], client=client, base=base)
    HTTPServer(app, max_body_size=1 << 40).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    import uvloop
    uvloop.install()
    asyncio.run(main())
