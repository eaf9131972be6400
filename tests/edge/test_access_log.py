"""Logs: one JSON object per line with request context; never a token, password or cookie.

The secrets are sent in real requests to a gateway at LOG_LEVEL=debug (and
configured as its passwords), then the whole captured stdout is searched for
them, error and traceback lines included.
"""

import base64
import json
import socket
import uuid

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from harness import REFRESH_SECRET, GatewayProcess, free_port, make_token

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
