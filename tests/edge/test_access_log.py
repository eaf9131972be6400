"""Logs: one JSON object per line with request context; never a token, password or cookie.

The secrets are sent in real requests to a gateway at LOG_LEVEL=debug (and
configured as its passwords), then the whole captured stdout is searched for
them, error and traceback lines included.
"""

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from urllib.parse import quote

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from harness import REFRESH_SECRET, GatewayProcess, free_port, make_token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REDIS_PASSWORD = "redis-pw-Zq8w2LmN4"
INTERNAL_PASSWORD = "internal-pw-Hx71KpQ9"
OPAQUE_COOKIE = "sessioncookie-Vb93TtR0"
ACCESS = make_token("u-logs")
REFRESH = make_token("u-logs", secret=REFRESH_SECRET, type="refresh")
FORGED = make_token("u-logs", secret="not-the-secret-at-all-0123456789abcdef")
EXPIRED = make_token("u-logs", ttl=-3600)
SECRETS = [REDIS_PASSWORD, INTERNAL_PASSWORD, OPAQUE_COOKIE, ACCESS, REFRESH, FORGED, EXPIRED,
           # the parts of a JWT that are secret-bearing: its signature and payload
           ACCESS.split(".")[2], REFRESH.split(".")[2], FORGED.split(".")[2], ACCESS.split(".")[1]]


@pytest.fixture(scope="module")
def noisy(stub_upstreams):
    """A debug-level gateway whose Redis (with a password) is unreachable and one upstream refuses."""
    process = GatewayProcess({
        **stub_upstreams.env(),
        "LOG_LEVEL": "debug",
        "REDIS_URL": None,
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(free_port()),  # nothing listens: connection errors get logged
        "REDIS_PASSWORD": REDIS_PASSWORD,
        "INTERNAL_AUTH_USER": "ops",
        "INTERNAL_AUTH_PASSWORD": INTERNAL_PASSWORD,
        "NOTIFICATIONS_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
        "RATE_LIMIT_ENABLED": "false",
    }).start()
    yield process
    process.stop()


async def send(url, method="GET", headers=None, body=None):
    return await AsyncHTTPClient().fetch(url, method=method, headers=headers or {}, body=body,
                                         raise_error=False, allow_nonstandard_methods=True)


@pytest.mark.gen_test(timeout=30)
async def test_secrets_sent_in_requests_never_reach_the_logs(noisy, stubs):
    cookie = f"refreshToken={REFRESH}; session={OPAQUE_COOKIE}"
    base = noisy.url
    requests = [
        ("GET", base("/api/users/echo"), {"Authorization": f"Bearer {ACCESS}", "Cookie": cookie}, None),
        ("GET", base("/api/users/echo"), {"Authorization": f"Bearer {FORGED}"}, None),
        ("GET", base("/api/users/echo"), {"Authorization": f"Bearer {EXPIRED}"}, None),
        ("GET", base("/api/users/echo"), {"Authorization": f"Basic {base64.b64encode(b'u:' + INTERNAL_PASSWORD.encode()).decode()}"}, None),
        ("POST", base("/api/auth/refresh"), {"Cookie": cookie}, b"{}"),
        ("POST", base("/api/auth/refresh"), {"Cookie": f"refreshToken={FORGED}"}, b"{}"),
        ("POST", base("/api/auth/login"), {"Content-Type": "application/json"},
         json.dumps({"email": "a@b.c", "password": INTERNAL_PASSWORD}).encode()),
        ("GET", base(f"/api/users/{ACCESS}"), {"Authorization": f"Bearer {ACCESS}"}, None),
        ("GET", base(f"/api/users/echo?token={ACCESS}&password={REDIS_PASSWORD}"),
         {"Authorization": f"Bearer {ACCESS}"}, None),
        ("GET", base("/api/users/reset"), {"Authorization": f"Bearer {ACCESS}", "Cookie": cookie}, None),
        ("GET", base("/api/notifications/x"), {"Authorization": f"Bearer {ACCESS}", "Cookie": cookie}, None),
        ("GET", base(f"/../{ACCESS}/%2e%2e/x"), {"Authorization": f"Bearer {ACCESS}"}, None),
        ("GET", base("/socket.io/?EIO=4&transport=polling"), {"Authorization": f"Bearer {FORGED}",
                                                              "Cookie": cookie}, None),
        ("GET", noisy.internal_base + "/metrics",
         {"Authorization": "Basic " + base64.b64encode(f"ops:{INTERNAL_PASSWORD}".encode()).decode()}, None),
        ("GET", noisy.internal_base + "/metrics",
         {"Authorization": "Basic " + base64.b64encode(f"ops:{INTERNAL_PASSWORD}x".encode()).decode()}, None),
        ("POST", noisy.internal_base + "/internal/events",
         {"Authorization": "Basic " + base64.b64encode(f"ops:{INTERNAL_PASSWORD}".encode()).decode()},
         json.dumps({"event": "nope", "data": {"token": ACCESS}}).encode()),
    ]
    for method, url, headers, body in requests:
        try:
            await send(url, method, headers, body)
        except HTTPClientError:  # /reset: the upstream dies mid-body, so the client is cut
            pass
    # A malformed header: tornado itself logs the offending value.
    for header in (f"Cookie: session={OPAQUE_COOKIE}; refreshToken={REFRESH}\x01",
                   f"Authorization: Basic {INTERNAL_PASSWORD}\x7f", f"X-{OPAQUE_COOKIE}\x01: 1"):
        with socket.create_connection(("127.0.0.1", noisy.port)) as raw:
            raw.sendall(f"GET /api/users/echo HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n".encode())
            raw.settimeout(5)
            assert raw.recv(4096).startswith(b"HTTP/1.1 400")
    await send(base("/healthz"))  # the last line written after all of the above
    output = noisy.logs()
    assert output.strip()
    for secret in SECRETS:
        assert secret not in output, f"secret {secret[:12]}... in the logs"
    for line in output.splitlines():
        json.loads(line)  # every line is one JSON object


@pytest.mark.gen_test
async def test_proxied_request_line_has_the_request_context(noisy, stubs):
    request_id = f"req-{uuid.uuid4().hex}"
    response = await send(noisy.url("/api/users/slow/150"), headers={
        "Authorization": f"Bearer {make_token('u-context')}", "X-Request-ID": request_id})
    assert response.code == 200
    await send(noisy.url("/healthz"))
    lines = [r for r in noisy.log_records() if r.get("request_id") == request_id]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["level"] == "info"
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert line["user_id"] == "u-context"
    assert line["route"] == "users" and line["upstream"] == "users"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 150  # upstream slept 150 ms
    assert "/api/users/slow/150" in line["message"]


@pytest.mark.gen_test
async def test_gateway_error_lines_name_the_request(noisy, stubs):
    request_id = f"req-{uuid.uuid4().hex}"
    response = await send(noisy.url("/api/notifications/x"), headers={
        "Authorization": f"Bearer {ACCESS}", "X-Request-ID": request_id})
    assert response.code in (502, 503)
    assert json.loads(response.body)["error"]["requestId"] == request_id
    await send(noisy.url("/healthz"))
    lines = [r for r in noisy.log_records() if r.get("request_id") == request_id]
    assert lines and all(r["level"] in ("warning", "error") for r in lines if r.get("status"))
    assert any(r.get("status") == response.code and r.get("upstream") == "notifications" for r in lines)


def test_formatter_removes_configured_secret_values_from_messages_fields_and_tracebacks():
    import logging

    from tornado_gateway.logs import JsonFormatter

    formatter = JsonFormatter([INTERNAL_PASSWORD, "p@ss word/Ü-secret", "short"])
    try:
        raise RuntimeError(f"login failed for ops with {INTERNAL_PASSWORD}")
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "connecting to redis://:%s@h:1 as %s",
                               ("p%40ss%20word%2F%C3%9C-secret", INTERNAL_PASSWORD), exc_info)
    record.path = f"/x/{INTERNAL_PASSWORD}"
    line = formatter.format(record)
    entry = json.loads(line)
    assert INTERNAL_PASSWORD not in line and "p%40ss%20word" not in line
    assert "RuntimeError" in entry["error"] and entry["path"] == "/x/[redacted]"
    assert "short" not in formatter.secrets  # too short to take out of every word


# -- every line JSON, nothing lost (issue 7 point 13, issue 9 point 2) --------------------------

def _records(output: str) -> list[dict]:
    """Every line of ``output`` as JSON; fails on the first line that is not."""
    records = []
    for line in output.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return records


async def _burst(gateway, count: int, connections: int = 8) -> list[str]:
    """``count`` proxied GETs over keep-alive connections; the request ids, all answered 200."""
    ids = [f"burst-{uuid.uuid4().hex}" for _ in range(count)]
    token = make_token("u-burst")

    async def one_connection(chunk: list[str]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        for request_id in chunk:
            writer.write(f"GET /api/users/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                         f"X-Request-ID: {request_id}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(one_connection(ids[i::connections]) for i in range(connections)))
    return ids


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT,), (signal.SIGTERM, signal.SIGTERM),
                                     (signal.SIGINT, signal.SIGINT)],
                         ids=["sigterm", "sigint", "sigterm-twice", "sigint-twice"])
@pytest.mark.gen_test(timeout=40)
async def test_every_access_line_is_written_before_the_process_ends(start_gateway, stubs, signals):
    """Access lines are buffered per loop iteration: a signal right after the last answer loses none."""
    gateway = start_gateway({"LOG_LEVEL": "info", "DRAIN_GRACE": "0", "DRAIN_TIMEOUT": "10",
                             "RATE_LIMIT_ENABLED": "false"})
    ids = await _burst(gateway, 400)
    # a request in flight keeps the drain going, so that a second signal comes during it
    slow = asyncio.ensure_future(send(gateway.url("/api/users/slow/8000"),
                                      headers={"Authorization": f"Bearer {ACCESS}"}))
    while not stubs.received("users", "/slow/"):
        await asyncio.sleep(0.01)
    gateway.signal(signals[0])
    if len(signals) > 1:
        while "draining" not in gateway.logs():
            await asyncio.sleep(0.01)
        gateway.signal(signals[1])
    code = gateway.wait(20)
    slow.cancel()
    assert code == (0 if len(signals) == 1 else 1)
    records = _records(gateway.logs())
    logged = {r.get("request_id") for r in records if r.get("logger") == "tornado_gateway.access"}
    missing = [i for i in ids if i not in logged]
    assert not missing, f"{len(missing)} of {len(ids)} access lines lost, e.g. {missing[:2]}"


@pytest.mark.gen_test(timeout=30)
async def test_access_line_fields_and_redaction_of_what_a_client_chose(gateway, stubs):
    """The access line is written without ``logging``: still JSON (a quote in the path), still
    redacted where a client chose the text (a token as request id, a token in the path)."""
    token = make_token("u-fields")
    jwt_shaped_id = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlY3JldA"  # fits X-Request-ID
    for path, status in (('/api/users/a"b%C3%A9', b"400"), (f"/api/users/{ACCESS}", b"200")):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(f"GET {path}?token={ACCESS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     f"X-Request-ID: {jwt_shaped_id}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status), head
        writer.close()
    await send(gateway.url("/healthz"))
    output = gateway.logs()
    lines = [r for r in _records(output) if r.get("logger") == "tornado_gateway.access"
             and r.get("request_id") == "[redacted-jwt]"]
    assert ACCESS not in output and ACCESS.split(".")[2] not in output and jwt_shaped_id not in output
    assert [line["path"] for line in lines] == ['/api/users/a"b%C3%A9', "/api/users/[redacted-jwt]"]
    refused, proxied = lines
    assert refused["message"] == 'GET /api/users/a"b%C3%A9 400' and refused["status"] == 400
    assert refused["client_ip"] == "127.0.0.1"  # on refusals only
    assert proxied["message"] == "GET /api/users/[redacted-jwt] 200" and proxied["request_id"] == "[redacted-jwt]"
    assert proxied["level"] == "info" and proxied["route"] == "users" and proxied["upstream"] == "users"
    assert proxied["method"] == "GET" and proxied["status"] == 200 and proxied["duration_ms"] >= 0
    assert "client_ip" not in proxied


def test_start_up_warning_keeps_its_plain_words(start_gateway):
    """The redaction runs over values, not over the gateway's own sentences ("...: it refuses ...")."""
    gateway = start_gateway({"INTERNAL_AUTH_USER": None, "INTERNAL_AUTH_PASSWORD": None})
    # Serving (the port is bound before start-up finishes; a SIGTERM before it would end the
    # process before the listeners, and this line, exist).
    assert gateway.get_json("/healthz")[0] == 200
    gateway.stop()
    lines = [r["message"] for r in _records(gateway.logs()) if "internal listener" in r.get("message", "")]
    assert lines and "has no INTERNAL_AUTH_USER/INTERNAL_AUTH_PASSWORD: it refuses /internal/events and " \
                      "/metrics" in lines[0], lines
    assert "[redacted]" not in lines[0]


@pytest.mark.filterwarnings("ignore:The HMAC key")  # the test signs with the short key itself
@pytest.mark.gen_test(timeout=30)
async def test_short_secret_is_said_once_in_the_gateways_words_not_by_pyjwt(start_gateway, stubs):
    short = "dev-secret-17b"  # 14 bytes: pyjwt warns (InsecureKeyLengthWarning) on each such key
    gateway = start_gateway({"JWT_ACCESS_SECRET": short})
    for _ in range(3):
        response = await send(gateway.url("/api/users/echo"),
                              headers={"Authorization": f"Bearer {make_token('u-short', secret=short)}"})
        assert response.code == 200
    await send(gateway.url("/healthz"))
    gateway.stop()
    output = gateway.logs()
    records = _records(output)
    assert "InsecureKeyLength" not in output and "HMAC key" not in output
    said = [r for r in records if r["level"] == "warning" and "JWT_ACCESS_SECRET is shorter than 32 bytes"
            in r["message"]]
    assert len(said) == 1, said
    assert short not in output


@pytest.mark.gen_test(timeout=30)
async def test_socket_that_authenticates_in_time_leaves_no_unawaited_coroutine(start_gateway, stubs):
    """The AUTH_TIMEOUT timer of a socket that sent auth:hello is cancelled without a RuntimeWarning."""
    from chat_fakes import SocketClient

    gateway = start_gateway({"AUTH_TIMEOUT": "30", "SOCKET_TOKEN_GRACE": "30"})
    for n in range(5):
        client = await SocketClient().connect(gateway)
        assert (await client.call("auth:hello", {"token": make_token(f"late-{n}")}))["ok"]
        await client.sio.disconnect()
    await send(gateway.url("/healthz"))
    assert gateway.stop() == 0
    output = gateway.logs()
    _records(output)
    assert "never awaited" not in output and "_auth_timed_out" not in output


def _python(code: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


def test_warnings_and_crashes_of_the_process_are_json_lines():
    """captureWarnings and the exception hooks: a library warning, an exception ignored in a
    destructor and the crash that ends the loop are JSON lines, and the lines buffered in the
    crashing loop iteration are written too."""
    proc = _python("""
        import asyncio, warnings
        from tornado_gateway.logs import access, setup_logging
        setup_logging("info", secrets=["hunter2-the-secret"])

        class Leaky:
            def __del__(self):
                raise ValueError("in a destructor, with hunter2-the-secret")

        async def main():
            warnings.warn("a library's warning", DeprecationWarning if False else UserWarning)
            Leaky()
            for n in range(50):
                access.write(20, "GET", f"/n/{n}", 200, 0.001, f"r{n}", None, "proxy", None, None)
            raise RuntimeError("the loop crashed")

        asyncio.run(main())
    """)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert err == b"", err
    records = _records(out.decode())
    assert [r["request_id"] for r in records if r.get("logger") == "tornado_gateway.access"] == \
        [f"r{n}" for n in range(50)]
    warning = next(r for r in records if r["logger"] == "py.warnings")
    assert warning["level"] == "warning" and "a library's warning" in warning["message"]
    ignored = next(r for r in records if "destructor" in r.get("error", ""))
    assert "hunter2-the-secret" not in json.dumps(ignored)
    crash = records[-1]
    assert crash["level"] == "critical" and "RuntimeError: the loop crashed" in crash["error"]


def test_sigterm_outside_the_drain_writes_what_is_buffered():
    """Before the server installs its drain handler (start-up), SIGTERM still ends the
    process through ``atexit``: every line written so far reaches stdout."""
    proc = _python("""
        import asyncio, os, signal, sys
        from tornado_gateway.logs import access, setup_logging
        setup_logging("info")

        async def main():
            n = 0
            while True:
                access.write(20, "GET", "/x", 200, 0.001, f"r{n}", None, "proxy", None, None)
                n += 1
                if n == 1000:
                    print("ready", file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(0)

        asyncio.run(main())
    """)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    ids = [r["request_id"] for r in _records(out.decode())]
    assert len(ids) >= 1000 and ids == [f"r{n}" for n in range(len(ids))]
