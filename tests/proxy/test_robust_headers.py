"""Identity headers in other spellings (issue 7, point 8): a client's ``X_User_Id`` (which
WSGI/CGI/PHP read as ``HTTP_X_USER_ID``) never reaches a service; no header name with an
underscore is passed on at all (nginx's default), and the gateway's own X-User-Id is the only
identity header a service sees."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import AsyncHTTPClient

from internal_client import running_nodes
from robust_support import make_token

FORGED = [("X_User_Id", "admin"), ("x_user_id", "admin"), ("X-User_Id", "admin"),
          ("X_User-Roles", "admin"), ("X-USER-ID", "admin"), ("X-User-Roles", "admin"),
          ("X_Forwarded_For", "10.0.0.1"), ("Some_Header", "v")]


@pytest.fixture(scope="module")
def nodes(redis_server, stub_upstreams):
    yield from running_nodes(redis_server, stub_upstreams)


def header_names(record) -> list[str]:
    return [name for name, _ in record.header_list]


async def send(gw, path: str, extra: list[tuple[str, str]]):
    from tornado.httputil import HTTPHeaders

    headers = HTTPHeaders()
    for name, value in extra:
        headers.add(name, value)
    return await AsyncHTTPClient().fetch(gw.url(path), headers=headers, raise_error=False)


@pytest.mark.gen_test(timeout=30)
async def test_identity_headers_in_every_spelling_never_reach_a_service(nodes, stubs):
    for gw in nodes:
        stubs.clear()
        anonymous = await send(gw, "/api/auth/login", FORGED)
        assert anonymous.code == 200
        user = "alice-hdr"
        authed = await send(gw, "/api/users/me", [("Authorization", f"Bearer {make_token(user)}"),
                                                   *FORGED])
        assert authed.code == 200
        (auth_record,), (users_record,) = stubs.received("auth"), stubs.received("users")
        for record in (auth_record, users_record):
            names = header_names(record)
            assert not [n for n in names if "_" in n], names
            identity = [(n, v) for n, v in record.header_list if n.lower().startswith("x-user")]
            expected = [] if record is auth_record else [("X-User-Id", user)]
            assert identity == expected, identity
        assert json.loads(authed.body)["headers"]["x-user-id"] == user
        assert users_record.headers["x-forwarded-for"] == "127.0.0.1"


def test_identity_header_spellings_unit():
    from tornado_gateway.proxy.headers import is_dropped_spelling, is_identity_header

    for name in ("x-user-id", "x_user_id", "x-user_id", "x_user-roles", "x-userid"):
        assert is_identity_header(name), name
    for name in ("x-request-id", "authorization", "x-use"):
        assert not is_identity_header(name), name
    assert is_dropped_spelling("some_header") and not is_dropped_spelling("some-header")
