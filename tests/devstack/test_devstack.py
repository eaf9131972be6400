"""``--devstack``: the gateway and its six stand-ins in one real process, over real sockets (SPEC §8)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from chat_fakes import SocketClient
from devstack_process import DevstackProcess
from harness import RedisServer, free_port, run_gateway_cli

ACCESS = "devstack-test-access-secret-0123456789abcdef"
REFRESH = "devstack-test-refresh-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def stack():
    process = DevstackProcess().start()
    yield process
    process.stop()


def register(stack: DevstackProcess, name: str | None = None) -> dict:
    username = name or f"u{uuid.uuid4().hex[:10]}"
    status, body, _ = stack.request("POST", "/api/auth/register",
                                    {"username": username, "password": "password-1", "displayName": username})
    assert status == 201, body
    return body


async def joined(stack: DevstackProcess, token: str, chat: str = "c1") -> SocketClient:
    client = await SocketClient().connect(stack, token)
    assert await client.call("chat:join", {"chatId": chat}) == {"ok": True, "data": {"chatId": chat}}
    return client


# -- start-up ------------------------------------------------------------------

def test_startup_block_on_stderr_with_a_curl_line_that_works_as_printed(stack):
    assert stack.banner_line("URL").startswith(stack.base)
    users = stack.banner_line("users")
    assert all(name in users for name in ("alice", "bob", "carol")) and "devstack" in users
    curl = stack.banner_line("try")
    assert curl.startswith("curl ")
    result = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    chat = json.loads(result.stdout)["chat"]
    assert chat["id"] == "c1" and len(chat["memberIds"]) == 3
    # stdout stays JSON lines: the block went to stderr only
    lines = [line for line in stack.stdout().splitlines() if line.strip()]
    assert lines and all(json.loads(line) for line in lines)
    assert "curl" not in stack.stdout()


def test_memory_mode_by_default_although_redis_host_defaults_to_localhost(stack):
    status, body, _ = stack.request("GET", "/readyz")
    assert status == 200 and body["checks"]["redis"] == {"ok": True, "mode": "memory"}


def test_refused_in_production_with_one_line_and_exit_2():
    result = run_gateway_cli(["--devstack"], env={"NODE_ENV": "production"})
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--devstack" in lines[0] and "production" in lines[0]


def test_configured_secrets_sign_the_tokens_and_appear_nowhere():
    stack = DevstackProcess({"JWT_ACCESS_SECRET": ACCESS, "JWT_REFRESH_SECRET": REFRESH}).start()
    try:
        body = stack.login("bob")
        claims = jwt.decode(body["accessToken"], ACCESS, algorithms=["HS256"])
        assert claims["sub"] == body["user"]["id"] and claims["exp"] > claims["iat"]
        assert jwt.decode(body["refreshToken"], REFRESH, algorithms=["HS256"])["type"] == "refresh"
        banner_token = stack.banner_line("token") and stack.stderr().split("valid 24 h:\n", 1)[1].split()[0]
        assert jwt.decode(banner_token, ACCESS, algorithms=["HS256"])["sub"] == "u1"  # alice
    finally:
        stack.stop()
    for output in (stack.stdout(), stack.stderr()):
        assert ACCESS not in output and REFRESH not in output


def test_redis_is_used_when_configured_explicitly():
    redis = RedisServer().start()
    stack = DevstackProcess({"REDIS_URL": redis.url}).start()
    try:
        status, body, _ = stack.request("GET", "/readyz")
        assert status == 200 and body["checks"]["redis"]["ok"] is True
        assert "mode" not in body["checks"]["redis"]
    finally:
        stack.stop()
        redis.stop()


def test_service_url_path_is_where_the_stand_in_serves():
    chats = free_port()
    stack = DevstackProcess({"CHATS_SERVICE_URL": f"http://127.0.0.1:{chats}/v1/chats"})
    stack.service_ports["chats"] = chats
    stack.start()
    try:
        token = stack.login("alice")["accessToken"]
        status, body, _ = stack.request("GET", "/api/chats/c1", token=token)
        assert status == 200 and body["chat"]["id"] == "c1"
        import urllib.error
        import urllib.request

        req = urllib.request.Request(stack.service_url("chats", "/v1/chats/c1"), headers={"X-User-Id": "u1"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.loads(resp.read())["chat"]["id"] == "c1"
        with pytest.raises(urllib.error.HTTPError) as err:  # nothing outside the URL's own path
            urllib.request.urlopen(urllib.request.Request(stack.service_url("chats", "/c1"),
                                                          headers={"X-User-Id": "u1"}), timeout=5)
        assert err.value.code == 404
    finally:
        stack.stop()


# -- auth and users ------------------------------------------------------------

def test_login_sets_the_refresh_cookie_and_a_bad_password_is_401(stack):
    body = stack.login("alice")
    assert body["user"] == {"id": "u1", "username": "alice", "displayName": "Alice"}
    assert body["accessToken"] and body["refreshToken"]
    status, _, headers = stack.request("POST", "/api/auth/login", {"username": "alice", "password": "x" * 8})
    assert status == 401
    status, body, headers = stack.request("POST", "/api/auth/login", {"username": "bob", "password": "devstack"})
    assert headers["Set-Cookie"].startswith(f"refreshToken={body['refreshToken']};")
    assert "HttpOnly" in headers["Set-Cookie"] and "Path=/api/auth" in headers["Set-Cookie"]


def test_refresh_with_the_cookie_gives_a_new_pair_and_a_forged_one_is_401(stack):
    old = stack.login("carol")
    status, body, _ = stack.request("POST", "/api/auth/refresh",
                                    headers={"Cookie": f"refreshToken={old['refreshToken']}"})
    assert status == 200 and body["user"]["username"] == "carol"
    assert body["accessToken"] != old["accessToken"]
    status, me, _ = stack.request("GET", "/api/users/me", token=body["accessToken"])
    assert status == 200 and me["user"]["username"] == "carol"
    forged = jwt.encode({"sub": "u3", "type": "refresh", "exp": 4102444800}, "not-the-secret-" * 3)
    status, body, _ = stack.request("POST", "/api/auth/refresh", headers={"Cookie": f"refreshToken={forged}"})
    assert status == 401


def test_register_then_taken_and_users_lookup(stack):
    name = f"dave{uuid.uuid4().hex[:6]}"
    body = register(stack, name)
    assert body["user"]["username"] == name and body["accessToken"]
    status, _, _ = stack.request("POST", "/api/auth/register", {"username": name, "password": "password-2"})
    assert status == 409
    token = body["accessToken"]
    assert stack.request("GET", f"/api/users/{body['user']['id']}", token=token)[1]["user"]["username"] == name
    found = stack.request("GET", "/api/users?search=ALI", token=token)[1]["users"]
    assert [u["username"] for u in found] == ["alice"]
    assert stack.request("GET", "/api/users/nobody", token=token)[0] == 404


# -- chats and the paths a service receives ------------------------------------

def test_chats_list_create_and_membership(stack):
    alice = stack.login("alice")["accessToken"]
    assert "c1" in [c["id"] for c in stack.request("GET", "/api/chats", token=alice)[1]["chats"]]
    outsider = register(stack)
    assert stack.request("GET", "/api/chats/c1", token=outsider["accessToken"])[0] == 403
    assert stack.request("GET", "/api/chats/nope", token=alice)[0] == 404
    status, body, _ = stack.request("POST", "/api/chats", {"type": "direct", "memberIds": [outsider["user"]["id"]]},
                                    token=alice)
    assert status == 201 and sorted(body["chat"]["memberIds"]) == sorted(["u1", outsider["user"]["id"]])
    assert stack.request("GET", f"/api/chats/{body['chat']['id']}", token=outsider["accessToken"])[0] == 200


def test_a_stand_in_serves_the_paths_the_gateway_forwards(stack):
    """``/api/chats/c1`` reaches the chats service as ``/c1`` (prefix replaced, default URL)."""
    import urllib.request

    req = urllib.request.Request(stack.service_url("chats", "/c1"), headers={"X-User-Id": "u2"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["chat"]["id"] == "c1"
    req = urllib.request.Request(stack.service_url("messages", "/?chatId=c1&limit=1"), headers={"X-User-Id": "u2"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert len(json.loads(resp.read())["messages"]) == 1


# -- messages: sockets, HTTP, edits --------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_socket_send_reaches_the_room_with_a_delivered_receipt_and_is_stored(stack):
    alice_token, bob_token = stack.login("alice")["accessToken"], stack.login("bob")["accessToken"]
    alice, bob = await joined(stack, alice_token), await joined(stack, bob_token)
    try:
        typing = await alice.call("typing:start", {"chatId": "c1"})
        assert typing == {"ok": True, "data": {}}
        assert (await bob.next("typing:update"))[-1] == {"chatId": "c1", "userId": "u1", "typing": True}
        key = uuid.uuid4().hex
        ack = await alice.call("message:send", {"chatId": "c1", "clientMessageId": key, "text": "hi over socket"})
        assert ack["ok"] is True
        message = ack["data"]["message"]
        assert message["senderId"] == "u1" and message["text"] == "hi over socket"
        assert (await bob.next("message:new"))[-1] == {"message": message}
        receipt = (await alice.next("receipt:delivered"))[-1]
        assert receipt["messageId"] == message["id"] and receipt["userId"] == "u2"
        page = stack.request("GET", "/api/messages?chatId=c1&limit=5", token=bob_token)[1]["messages"]
        assert page[0]["id"] == message["id"]  # newest first
        # not announced a second time by the service: an HTTP send after it is the marker
        status, marker, _ = stack.request("POST", "/api/messages", {"chatId": "c1", "text": "marker"},
                                          token=alice_token)
        assert status == 201
        arrived = await bob.next("message:new", count=2)
        assert [m["message"]["id"] for m in arrived] == [message["id"], marker["message"]["id"]]
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.gen_test(timeout=30)
async def test_http_send_is_announced_and_an_offline_member_gets_a_notification(stack):
    alice_token, bob_token = stack.login("alice")["accessToken"], stack.login("bob")["accessToken"]
    carol_token = stack.login("carol")["accessToken"]
    bob = await joined(stack, bob_token)
    try:
        status, body, _ = stack.request("POST", "/api/messages", {"chatId": "c1", "text": "over HTTP"},
                                        headers={"Idempotency-Key": uuid.uuid4().hex}, token=alice_token)
        assert status == 201
        assert (await bob.next("message:new"))[-1] == {"message": body["message"]}
        notes = stack.request("GET", "/api/notifications", token=carol_token)[1]["notifications"]
        assert notes[0]["messageId"] == body["message"]["id"] and notes[0]["senderId"] == "u1"
        bob_notes = stack.request("GET", "/api/notifications", token=bob_token)[1]["notifications"]
        assert body["message"]["id"] not in [n["messageId"] for n in bob_notes]  # bob was online
    finally:
        await bob.close()


@pytest.mark.gen_test(timeout=30)
async def test_edit_and_delete_over_http_are_announced_to_the_chat(stack):
    alice_token, bob_token = stack.login("alice")["accessToken"], stack.login("bob")["accessToken"]
    bob = await joined(stack, bob_token)
    try:
        message = stack.request("POST", "/api/messages", {"chatId": "c1", "text": "draft"}, token=alice_token)[1]
        message_id = message["message"]["id"]
        assert stack.request("PATCH", f"/api/messages/{message_id}", {"text": "bob's"}, token=bob_token)[0] == 403
        status, edited, _ = stack.request("PATCH", f"/api/messages/{message_id}", {"text": "final"},
                                          token=alice_token)
        assert status == 200 and edited["message"]["editedAt"]
        event = (await bob.next("message:edit"))[-1]
        assert event["message"]["id"] == message_id and event["message"]["text"] == "final"
        assert stack.request("DELETE", f"/api/messages/{message_id}", token=alice_token)[0] == 200
        deleted = (await bob.next("message:delete"))[-1]["message"]
        assert deleted["id"] == message_id and deleted["deleted"] is True and deleted["text"] is None
        assert len(bob.events("message:edit")) == 1
    finally:
        await bob.close()


@pytest.mark.gen_test(timeout=30)
async def test_reaction_over_the_socket_and_read_marks(stack):
    alice_token, bob_token = stack.login("alice")["accessToken"], stack.login("bob")["accessToken"]
    alice, bob = await joined(stack, alice_token), await joined(stack, bob_token)
    try:
        sent = await alice.call("message:send", {"chatId": "c1", "clientMessageId": uuid.uuid4().hex, "text": "react"})
        message_id = sent["data"]["message"]["id"]
        reply = await bob.call("reaction:set", {"chatId": "c1", "messageId": message_id, "emoji": "+1"})
        assert reply["ok"] and reply["data"]["message"]["reactions"] == {"u2": "+1"}
        assert (await alice.next("message:edit"))[-1]["message"]["reactions"] == {"u2": "+1"}
        read = await bob.call("message:read", {"chatId": "c1", "messageIds": [message_id]})
        assert read["ok"] is True
        receipt = (await alice.next("receipt:read"))[-1]
        assert receipt["messageIds"] == [message_id] and receipt["userId"] == "u2"
    finally:
        await alice.close()
        await bob.close()


# -- media -----------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_media_upload_and_download_are_streamed_and_byte_exact(stack):
    token = stack.login("alice")["accessToken"]
    size, chunk = 24 * 1024 * 1024 + 7, os.urandom(256 * 1024)
    digest = hashlib.sha256()

    async def produce(write):
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            digest.update(piece)
            await write(piece)
            sent += len(piece)

    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(HTTPRequest(
            stack.url("/api/media"), method="POST", body_producer=produce, request_timeout=60,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "video/mp4",
                     "Content-Length": str(size)}))
        media = json.loads(response.body)["media"]
        assert response.code == 201 and media["size"] == size and media["contentType"] == "video/mp4"
        received, pieces = hashlib.sha256(), []

        def consume(data: bytes) -> None:
            pieces.append(len(data))
            received.update(data)

        response = await client.fetch(HTTPRequest(
            stack.url(f"/api/media/{media['id']}"), streaming_callback=consume, request_timeout=60,
            headers={"Authorization": f"Bearer {token}"}))
        assert response.code == 200 and response.headers["Content-Type"] == "video/mp4"
        assert sum(pieces) == size and received.hexdigest() == digest.hexdigest()
        assert len(pieces) > 1  # arrived as a stream, not one buffer
        status, body, _ = stack.request("GET", "/api/media/nope", token=token)
        assert status == 404
    finally:
        client.close()


def test_a_path_no_stand_in_serves_is_a_json_404(stack):
    token = stack.login("alice")["accessToken"]
    for method, path in (("GET", "/api/chats/c1/nope"), ("GET", "/api/auth/nope"),
                         ("POST", "/api/users/me/x")):
        status, body, headers = stack.request(method, path, {} if method == "POST" else None, token=token)
        assert status == 404, (path, body)
        assert headers["Content-Type"].startswith("application/json")
        assert body["error"]["code"] == "NOT_FOUND"


def test_http_send_has_the_socket_text_limit(stack):
    """A text the socket refuses is refused over HTTP too, so nothing reaches sockets
    that a socket could not have sent."""
    from tornado_gateway.realtime.payloads import MAX_TEXT
    token = stack.login("alice")["accessToken"]
    status, body, _ = stack.request("POST", "/api/messages",
                                    {"chatId": "c1", "text": "x" * (MAX_TEXT + 1)}, token=token)
    assert status == 400 and body["error"]["code"] == "VALIDATION_FAILED"
    status, body, _ = stack.request("POST", "/api/messages",
                                    {"chatId": "c1", "text": "x" * MAX_TEXT}, token=token)
    assert status == 201, body
