"""Talking to a gateway's internal listener: Basic and Digest auth, events, metrics.

The Digest side is computed here from RFC 2617 (MD5, qop=auth), independently
of the server's library, so the tests check interoperability, not a copy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re

from tornado.httpclient import AsyncHTTPClient, HTTPResponse

USER, PASSWORD = "events-svc", "internal-password-0123456789"
AUTH_ENV = {"INTERNAL_AUTH_USER": USER, "INTERNAL_AUTH_PASSWORD": PASSWORD}


def basic_header(user: str = USER, password: str = PASSWORD) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_header(challenge: str, method: str, uri: str, user: str = USER,
                  password: str = PASSWORD) -> dict:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    cnonce, nc = os.urandom(8).hex(), "00000001"
    ha1 = _md5(f"{user}:{params['realm']}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    response = _md5(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    value = (f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
             f'uri="{uri}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}", '
             f'response="{response}", opaque="{params["opaque"]}"')
    return {"Authorization": value}


def digest_challenge(response: HTTPResponse) -> str:
    return next(v for v in response.headers.get_list("WWW-Authenticate") if v.startswith("Digest "))


async def fetch(gateway, path: str, method: str = "GET", body=None, headers: dict | None = None,
                auth: str | None = "basic") -> HTTPResponse:
    """A request to the internal listener; ``auth`` is "basic", "digest" or None."""
    client = AsyncHTTPClient()
    url = gateway.internal_base + path
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    headers = dict(headers or {})
    if auth == "basic":
        headers.update(basic_header())
    elif auth == "digest":
        first = await client.fetch(url, method=method, body=body, headers=headers, raise_error=False)
        assert first.code == 401, first.code
        headers.update(digest_header(digest_challenge(first), method, path))
    return await client.fetch(url, method=method, body=body, headers=headers, raise_error=False)


async def post_event(gateway, payload, auth: str | None = "basic") -> HTTPResponse:
    return await fetch(gateway, "/internal/events", "POST", payload, auth=auth)


async def metric_value(gateway, name: str, **labels) -> float:
    """The current value of one sample of ``/metrics`` (0 when absent)."""
    response = await fetch(gateway, "/metrics")
    assert response.code == 200
    wanted = {k: str(v) for k, v in labels.items()}
    for line in response.body.decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample.partition("{")[2]))
        if all(found.get(k) == v for k, v in wanted.items()):
            return float(value)
    return 0.0
