"""A chat client in Python (python-socketio) against the devstack or any gateway.

    pip install python-socketio aiohttp
    python examples/python/chat_client.py --user bob                       # listen
    python examples/python/chat_client.py --user alice --send "hi there"   # type, send, listen

It logs in over HTTP, connects the socket with the token, joins a chat (the
first group chat of the user unless --chat), acknowledges every message:new
(which is what makes the sender's receipt:delivered), optionally types and
sends, then prints every event that arrives, one line each: `EVENT JSON`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid

import aiohttp
import socketio

SERVER_EVENTS = ("message:new", "message:edit", "message:delete", "receipt:delivered", "receipt:read",
                 "typing:update", "chat:updated", "presence:update", "error")


def show(kind: str, data: object) -> None:
    print(kind, json.dumps(data, ensure_ascii=False), flush=True)


async def login(url: str, username: str, password: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/auth/login", json={"username": username, "password": password}) as r:
            body = await r.json()
            if r.status != 200:
                raise SystemExit(f"login failed ({r.status}): {body}")
            return body


async def first_group_chat(url: str, token: str) -> str:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get(f"{url}/api/chats") as r:
            chats = (await r.json())["chats"]
    groups = [c["id"] for c in chats if c["type"] == "group"]
    if not groups:
        raise SystemExit("no group chat: pass --chat")
    return groups[0]


async def main(args: argparse.Namespace) -> None:
    session = await login(args.url, args.user, args.password)
    token, me = session["accessToken"], session["user"]
    chat = args.chat or await first_group_chat(args.url, token)
    sio = socketio.AsyncClient(reconnection=False)
    done = asyncio.Event()

    def handler(event: str):
        async def on_event(data=None):
            show(event, data)
            if event == args.until:
                done.set()
            # Returning acknowledges the event: for message:new that is the delivered receipt.
            return None
        return on_event

    for event in SERVER_EVENTS:
        sio.on(event, handler(event))
    await sio.connect(args.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    joined = await sio.call("chat:join", {"chatId": chat}, timeout=10)
    if not joined.get("ok"):
        raise SystemExit(f"chat:join refused: {joined}")
    show("ready", {"userId": me["id"], "username": me["username"], "chatId": chat})
    if args.send:
        show("ack typing:start", await sio.call("typing:start", {"chatId": chat}, timeout=10))
        await asyncio.sleep(0.3)
        sent = await sio.call("message:send", {"chatId": chat, "clientMessageId": uuid.uuid4().hex,
                                               "text": args.send}, timeout=10)
        show("ack message:send", sent)
        show("ack typing:stop", await sio.call("typing:stop", {"chatId": chat}, timeout=10))
    try:
        await asyncio.wait_for(done.wait(), args.listen)
    except asyncio.TimeoutError:
        pass
    # python-engineio's disconnect closes the websocket without flushing its send queue:
    # wait until what is queued (the acks of the events just handled) has gone out.
    await asyncio.wait_for(sio.eio.queue.join(), 5)
    await sio.disconnect()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Python chat client for the tornado_gateway devstack")
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the gateway (default: devstack's)")
    parser.add_argument("--user", default="alice")
    parser.add_argument("--password", default="devstack")
    parser.add_argument("--chat", help="chat id (default: the user's first group chat)")
    parser.add_argument("--send", help="type, then send this text")
    parser.add_argument("--listen", type=float, default=10.0, help="seconds to print what arrives")
    parser.add_argument("--until", help="stop early once this event arrived (e.g. message:new)")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        sys.exit(130)
