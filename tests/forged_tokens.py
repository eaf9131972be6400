"""Tokens the gateway must refuse (SPEC §3), shared by the HTTP and the socket tests."""

from __future__ import annotations

import base64
import json
import time
import warnings

import jwt

from harness import REFRESH_SECRET, make_token

WRONG_SECRET = "not-the-access-secret-0123456789abcdef0123"


def _unsigned(alg: str) -> str:
    """A token naming ``alg`` with an empty signature (alg=none and its spellings)."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    now = int(time.time())
    return f"{part({'alg': alg, 'typ': 'JWT'})}.{part({'sub': 'u1', 'exp': now + 600})}."


def forged_tokens() -> dict[str, str]:
    now = int(time.time())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about the short HS512 key: that is the point
        return {
            "alg_none": jwt.encode({"sub": "u1", "exp": now + 600}, None, algorithm="none"),
            "alg_NONE_spelled": _unsigned("NONE"),
            "alg_empty": _unsigned(""),
            "wrong_key": make_token("u1", secret=WRONG_SECRET),
            "expired": make_token("u1", ttl=-3600),
            "refresh_as_access": make_token("u1", type="refresh"),
            "refresh_secret": make_token("u1", secret=REFRESH_SECRET),
            "missing_exp": make_token("u1", exp=None),
            "hs512_not_allowed": make_token("u1", algorithm="HS512"),
            "nbf_in_the_future": make_token("u1", nbf=now + 3600),
            "iat_in_the_future": make_token("u1", iat=now + 3600),
            "no_subject": make_token(None),
            "garbage": "not-a-jwt",
            "three_garbage_parts": "aaa.bbb.ccc",
        }


FORGED = forged_tokens()
