"""The refresh edge check cannot be skipped by another spelling (issue 7, point 9): paths are
classified the way a case-insensitive router reads them (unreserved escapes decoded, case
folded, ``;params`` dropped), and ``..;`` segments (Tomcat/Spring read them as ``..``) are refused."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import AsyncHTTPClient

from internal_client import running_nodes
from robust_support import make_token
from harness import REFRESH_SECRET

SPELLINGS = ["/api/auth/REFRESH", "/api/auth/%72efresh", "/api/auth/Refresh/", "/api/auth/%52EFRESH",
             "/api/auth/refresh;jsessionid=1", "/api/auth/x/../refresh", "/api/auth/%72%65%66resh"]


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams, env={"RATE_LIMIT_AUTH": "1000/60"})


async def post(gw, path: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await AsyncHTTPClient().fetch(gw.url(path), method="POST", body=b"{}", headers=headers,
                                         raise_error=False)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("path", SPELLINGS)
async def test_refresh_spellings_get_the_edge_check(nodes, stubs, path):
    gw = nodes[0]
    forged = make_token("u1", secret="not-the-refresh-secret-0123456789abcdef", type="refresh")
    for token in (None, forged, make_token("u1")):  # none, forged, an access token
        response = await post(gw, path, token)
        assert response.code == 401, (path, token, response.body)
    assert not stubs.received("auth"), [r.uri for r in stubs.received("auth")]
    good = make_token("u1", secret=REFRESH_SECRET, type="refresh")
    response = await post(gw, path, good)
    assert response.code == 200, response.body
    assert len(stubs.received("auth")) == 1


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("path", ["/api/users/a/..;/b", "/api/auth/..;/users/me", "/api/users/.;x/b",
                                  "/api/users/a/%2e%2e;x/b"])
async def test_dot_segments_with_parameters_are_refused(nodes, stubs, path):
    response = await AsyncHTTPClient().fetch(nodes[1].url(path), raise_error=False,
                                             headers={"Authorization": f"Bearer {make_token('u1')}"})
    assert response.code == 400
    assert json.loads(response.body)["error"]["code"] == "BAD_PATH"
    assert not stubs.received()


@pytest.mark.gen_test(timeout=30)
async def test_login_spellings_share_the_auth_rate_limit_class(nodes, stubs):
    policies = set()
    for path in ("/api/auth/login", "/api/auth/LOGIN", "/api/auth/%6Cogin", "/api/auth/login;x"):
        response = await post(nodes[0], path)
        policies.add(response.headers.get("RateLimit-Policy"))
    assert len(policies) == 1 and '"auth"' in policies.pop()


def test_class_key_unit():
    from tornado_gateway.edge.paths import class_key

    assert class_key("/api/auth/%72efresh") == "/api/auth/refresh"
    assert class_key("/api/auth/REFRESH;a=b") == "/api/auth/refresh"
    assert class_key("/api/users/caf%C3%A9/%2F") == "/api/users/caf%c3%a9/%2f"  # reserved stays
