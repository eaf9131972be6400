"""PooledHTTPClient.forward: the proxy's fetch, against a real loopback upstream."""

from __future__ import annotations

import pytest
from tornado.simple_httpclient import HTTPStreamClosedError

from tornado_gateway.upstream.client import PooledHTTPClient
from tornado_gateway.upstream.forward import ForwardRequest, target_for
from tornado_gateway.upstream.pool import Target

from upstream.test_wire import OK, serve


def forward_request(upstream, tail, heads, chunks, method="GET", body=None):
    return ForwardRequest(upstream, tail, method, {"Host": "up", "X-A": "1"}, body, None, None, None,
                          lambda start, headers: heads.append((start.code, headers.get("Content-Length"))),
                          chunks.append)


@pytest.mark.parametrize("upstream, tail", [
    ("http://127.0.0.1:8080", "/users/42"), ("http://127.0.0.1:8080", "/users/42?a=1&b=%20"),
    ("http://127.0.0.1:8080", ""), ("http://127.0.0.1:8080", "?q=1"), ("http://up.example/base", "/x"),
    ("http://up.example/base/", "/x?y"), ("https://[::1]:8443", "/s"), ("http://u:p@h:1", "/a"),
    ("http://h:1", "/a#frag"), ("http://h:1", "/a\tb"), ("http://h:1?x", "/a"), ("ftp://h", "/a"),
])
def test_target_for_is_what_parsing_the_whole_url_gives(upstream, tail):
    request = forward_request(upstream, tail, [], [])
    target = target_for(request)
    try:
        whole = Target(request)
    except ValueError:
        assert target is None
        return
    if target is not None:
        assert {name: getattr(target, name) for name in Target.__slots__} == \
            {name: getattr(whole, name) for name in Target.__slots__}


@pytest.mark.gen_test
async def test_forward_streams_the_answer_and_settles_with_none(io_loop):
    raw = await serve(OK, b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx")
    client = PooledHTTPClient(force_instance=True)
    heads, chunks = [], []
    try:
        assert await client.forward(forward_request(raw.base, "/a?b=1", heads, chunks)) is None
        assert await client.forward(forward_request(raw.base, "/c", heads, chunks)) is None
    finally:
        client.close()
        await raw.close()
    assert heads == [(200, "2"), (404, "1")] and b"".join(chunks) == b"okx"
    assert raw.requests[0].startswith(b"GET /a?b=1 HTTP/1.1\r\n") and raw.accepts == 1


@pytest.mark.gen_test
async def test_forward_fails_as_fetch_does(io_loop):
    raw = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close=True)
    client = PooledHTTPClient(force_instance=True)
    try:
        with pytest.raises(HTTPStreamClosedError):
            await client.forward(forward_request(raw.base, "/", [], []))
    finally:
        client.close()
        await raw.close()
    with pytest.raises(RuntimeError):
        client.forward(forward_request(raw.base, "/", [], []))
