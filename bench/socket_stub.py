"""A fast stub of the chats and messages services for bench/socket_bench.py (one port)."""

import itertools
import json
import sys
import time

import tornado.ioloop
import tornado.web

IDS = itertools.count(1)


class Chats(tornado.web.RequestHandler):
    def get(self, chat_id):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"chat": {"id": chat_id, "type": "group"}}))


class Messages(tornado.web.RequestHandler):
    def post(self):
        body = json.loads(self.request.body)
        message = {"id": f"m{next(IDS)}", "chatId": body["chatId"], "senderId": self.request.headers["X-User-Id"],
                   "text": body.get("text"), "createdAt": time.time()}
        self.set_status(201)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message}))


if __name__ == "__main__":
    app = tornado.web.Application([(r"/chats/([^/]+)", Chats), (r"/messages", Messages)])
    app.listen(int(sys.argv[1]), "127.0.0.1")
    tornado.ioloop.IOLoop.current().start()
