"""JWT at the HTTP edge (SPEC §3): protected and public routes, forged tokens, refresh at the edge."""

import json
import time

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient

from forged_tokens import FORGED, WRONG_SECRET
from harness import ACCESS_SECRET, REFRESH_SECRET, GatewayProcess, make_token


@pytest.fixture(scope="module")
def auth_gw(stub_upstreams):
    process = GatewayProcess({**stub_upstreams.env(), "RATE_LIMIT_ENABLED": "false"}).start()
    yield process
    process.stop()


async def call(gw, path, token=None, method="GET", headers=None, body=None):
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if method == "POST" and body is None:
        body = b""
    return await AsyncHTTPClient().fetch(gw.url(path), method=method, headers=headers, body=body,
                                         raise_error=False)


def error_code(response) -> str:
    return json.loads(response.body)["error"]["code"]


@pytest.mark.gen_test
async def test_valid_token_reaches_the_upstream_with_identity_and_authorization(auth_gw, stubs):
    token = make_token("u-77")
    response = await call(auth_gw, "/api/chats/list", token)
    assert response.code == 200
    seen = stubs.received("chats")[0].headers
    assert seen["x-user-id"] == "u-77"
    assert seen["authorization"] == f"Bearer {token}"


@pytest.mark.gen_test
async def test_userid_claim_is_the_fallback_for_sub(auth_gw, stubs):
    response = await call(auth_gw, "/api/chats/list", make_token(None, userId="u-fallback"))
    assert response.code == 200
    assert stubs.received("chats")[0].headers["x-user-id"] == "u-fallback"


@pytest.mark.gen_test
async def test_no_token_is_401_with_www_authenticate_and_never_forwarded(auth_gw, stubs):
    for headers in ({}, {"Authorization": "Basic dTpw"}, {"Authorization": "Bearer"}):
        response = await call(auth_gw, "/api/messages/1", headers=headers)
        assert response.code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        body = json.loads(response.body)["error"]
        assert body["code"] == "UNAUTHENTICATED" and body["requestId"]
    assert stubs.received() == []


@pytest.mark.gen_test
@pytest.mark.parametrize("kind", sorted(FORGED))
async def test_forged_tokens_are_401_and_never_forwarded(auth_gw, stubs, kind):
    response = await call(auth_gw, "/api/users/me", FORGED[kind])
    assert response.code == 401
    assert error_code(response) in ("INVALID_TOKEN", "TOKEN_EXPIRED")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert stubs.received() == []


@pytest.mark.gen_test
async def test_expired_token_says_token_expired(auth_gw):
    assert error_code(await call(auth_gw, "/api/users/me", make_token("u1", ttl=-3600))) == "TOKEN_EXPIRED"


@pytest.mark.gen_test
async def test_public_auth_routes_work_without_a_token_and_ignore_a_bad_one(auth_gw, stubs):
    assert (await call(auth_gw, "/api/auth/login", method="POST")).code == 200
    assert (await call(auth_gw, "/api/auth/register", make_token("u1", secret=WRONG_SECRET),
                       method="POST")).code == 200
    assert (await call(auth_gw, "/api/auth/me", make_token("u-9"))).code == 200
    anonymous, forged, valid = stubs.received("auth")
    assert "x-user-id" not in anonymous.headers
    assert "x-user-id" not in forged.headers  # an invalid token is ignored, never trusted
    assert valid.headers["x-user-id"] == "u-9"  # a valid one still yields identity


# -- refresh at the edge -------------------------------------------------------------------

@pytest.mark.gen_test
@pytest.mark.parametrize("where", ["cookie", "bearer"])
@pytest.mark.parametrize("token", [
    make_token("u1", secret=WRONG_SECRET, type="refresh"),
    make_token("u1", secret=REFRESH_SECRET, ttl=-3600, type="refresh"),
    make_token("u1", secret=ACCESS_SECRET),  # an access token is not a refresh token
    make_token("u1", secret=REFRESH_SECRET, type="access"),
    "garbage",
], ids=["forged", "expired", "access_token", "typed_access", "garbage"])
async def test_bad_refresh_token_is_401_and_auth_never_sees_it(auth_gw, stubs, where, token):
    if where == "cookie":
        response = await call(auth_gw, "/api/auth/refresh", method="POST",
                              headers={"Cookie": f"refreshToken={token}"})
    else:
        response = await call(auth_gw, "/api/auth/refresh", token, method="POST")
    assert response.code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert stubs.received("auth") == []


@pytest.mark.gen_test
async def test_refresh_without_any_token_and_with_a_trailing_slash_is_checked(auth_gw, stubs):
    assert (await call(auth_gw, "/api/auth/refresh", method="POST")).code == 401
    forged = make_token("u1", secret=WRONG_SECRET, type="refresh")
    assert (await call(auth_gw, "/api/auth/refresh/", forged, method="POST")).code == 401
    assert stubs.received("auth") == []


@pytest.mark.gen_test
async def test_valid_refresh_token_passes_as_cookie_or_bearer(auth_gw, stubs):
    refresh = make_token("u-r", secret=REFRESH_SECRET, type="refresh")
    cookie = {"Cookie": f"refreshToken={refresh}; theme=dark"}
    assert (await call(auth_gw, "/api/auth/refresh", method="POST", headers=cookie)).code == 200
    assert (await call(auth_gw, "/api/auth/refresh", refresh, method="POST")).code == 200
    # The usual browser case: access token as Bearer, refresh token as cookie.
    assert (await call(auth_gw, "/api/auth/refresh", make_token("u-r"), method="POST",
                       headers=cookie)).code == 200
    by_cookie, by_bearer, both = stubs.received("auth")
    assert by_cookie.headers["cookie"] == f"refreshToken={refresh}; theme=dark"
    assert by_bearer.headers["authorization"] == f"Bearer {refresh}"
    assert {r.headers["x-user-id"] for r in (by_cookie, by_bearer, both)} == {"u-r"}


# -- configured issuer, audience and public paths ----------------------------------------------

@pytest.mark.gen_test
async def test_issuer_audience_and_public_paths_from_settings(start_gateway, stubs):
    gw = start_gateway({"JWT_ISSUER": "chat-auth", "JWT_AUDIENCE": "chat-api",
                        "PUBLIC_PATHS": "/api/auth,/api/notifications/public",
                        "RATE_LIMIT_ENABLED": "false"})
    good = make_token("u1", iss="chat-auth", aud="chat-api")
    assert (await call(gw, "/api/users/me", good)).code == 200
    for bad in (make_token("u1", iss="someone-else", aud="chat-api"),
                make_token("u1", iss="chat-auth", aud="other-api"),
                make_token("u1", iss="chat-auth"),
                make_token("u1", aud="chat-api")):
        response = await call(gw, "/api/users/me", bad)
        assert response.code == 401 and error_code(response) == "INVALID_TOKEN"
    assert (await call(gw, "/api/notifications/public/feed")).code == 200
    assert (await call(gw, "/api/notifications/publicity")).code == 401  # segment boundary
    assert (await call(gw, "/api/notifications/private")).code == 401
    assert [r.path for r in stubs.received()] == ["/me", "/public/feed"]


def test_a_remembered_token_is_refused_once_it_expires():
    from tornado_gateway import config
    from tornado_gateway.edge.identity import AuthError, TokenVerifier

    settings = config.load(["gw"], {"JWT_ACCESS_SECRET": ACCESS_SECRET, "JWT_LEEWAY": "0",
                                    "REDIS_URL": "memory://"})
    verifier = TokenVerifier(settings)
    exp = int(time.time()) + 1
    token = make_token("u1", exp=exp)
    assert verifier.verify_access(token).user_id == "u1"
    assert verifier.verify_access(token).user_id == "u1"  # remembered
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(AuthError) as refused:
        verifier.verify_access(token)
    assert refused.value.code == "TOKEN_EXPIRED"
    forged = make_token("u1", secret=WRONG_SECRET)
    for _ in range(2):  # a refusal is never remembered as a success
        with pytest.raises(AuthError):
            verifier.verify_access(forged)



def test_hmac_keys_are_prepared_once_and_refused_keys_every_time(monkeypatch):
    # PreparedHMAC remembers the secrets pyjwt prepared: fresh tokens are checked without
    # preparing the key again, tokens signed with another secret are still refused, and a PEM
    # key given as an HMAC secret is refused every time, never kept.
    from jwt.algorithms import HMACAlgorithm

    from tornado_gateway import config
    from tornado_gateway.edge.identity import AuthError, PreparedHMAC, TokenVerifier

    settings = config.load(["gw"], {"JWT_ACCESS_SECRET": ACCESS_SECRET, "REDIS_URL": "memory://",
                                    "JWT_ALGORITHMS": "HS256,HS512"})
    verifier = TokenVerifier(settings)
    algorithm = jwt.get_algorithm_by_name("HS512")
    assert isinstance(algorithm, PreparedHMAC)
    algorithm._prepared.clear()
    prepared = []
    original = HMACAlgorithm.prepare_key
    monkeypatch.setattr(HMACAlgorithm, "prepare_key", lambda self, key: prepared.append(key) or original(self, key))
    for n in range(3):  # three fresh tokens (a repeated one would come from the verifier's cache)
        token = jwt.encode({"sub": f"u-hs512-{n}", "exp": int(time.time()) + 600}, ACCESS_SECRET,
                           algorithm="HS512")
        assert verifier.verify_access(token).user_id == f"u-hs512-{n}"
    assert prepared.count(ACCESS_SECRET) == 1  # once for three signatures and three checks (six without)
    for _ in range(2):
        with pytest.raises(AuthError) as refused:
            verifier.verify_access(make_token("u1", secret=WRONG_SECRET))
        assert refused.value.code == "INVALID_TOKEN"
    pem = b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
    registered = jwt.get_algorithm_by_name("HS256")
    for _ in range(2):
        with pytest.raises(jwt.InvalidKeyError):
            registered.prepare_key(pem)
    assert prepared.count(pem) == 2 and pem not in registered._prepared
