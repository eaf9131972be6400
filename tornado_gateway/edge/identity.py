"""JWT verification: access and refresh tokens, pinned HMAC algorithms.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import jwt
from jwt.algorithms import HMACAlgorithm
from tornado import httputil

from tornado_gateway.config import Settings
from tornado_gateway.edge.paths import class_key, is_under
from tornado_gateway.errors import GatewayError

if hasattr(jwt, "InsecureKeyLengthWarning"):  # pyjwt >= 2.10 warns on every short key; server.py says it once
    warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)


@dataclass(frozen=True)
class Identity:
    """A verified token's holder."""

    user_id: str
    token: str = field(repr=False)
    expires_at: float
    issued_at: float | None = None
    jti: str | None = None


class AuthError(GatewayError):
    """401 with ``WWW-Authenticate: Bearer``."""

    def __init__(self, code: str, message: str) -> None:
        challenge = 'Bearer realm="api"'
        if code != "UNAUTHENTICATED":
            error = "invalid_token"
            challenge += f', error="{error}", error_description="{message}"'
        super().__init__(code, message, 401, {"WWW-Authenticate": challenge})


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 8192:
        return None
    return token


class PreparedHMAC(HMACAlgorithm):
    """PyJWT's HMAC algorithm, remembering the keys it has prepared: PyJWT prepares the key
    again on every decode (it checks that the secret is no PEM, SSH or DER key, a JSON parse
    among those), about a fifth of a fresh token's check."""

    KEYS_KEPT = 16  # the configured secrets; past that, keys are prepared every time

    def __init__(self, hash_alg: Any) -> None:
        super().__init__(hash_alg)
        self._prepared: dict[str | bytes, bytes] = {}

    def prepare_key(self, key: str | bytes) -> bytes:
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = super().prepare_key(key)  # refused keys raise here, every time
            if len(self._prepared) < self.KEYS_KEPT:
                self._prepared[key] = prepared
        return prepared


def use_prepared_hmac() -> None:
    """Register :class:`PreparedHMAC` for HS256/384/512 with PyJWT (``jwt.register_algorithm``);
    once per process, whoever calls it first."""
    for name, hash_alg in (("HS256", HMACAlgorithm.SHA256), ("HS384", HMACAlgorithm.SHA384),
                           ("HS512", HMACAlgorithm.SHA512)):
        if not isinstance(jwt.get_algorithm_by_name(name), PreparedHMAC):
            jwt.unregister_algorithm(name)
            jwt.register_algorithm(name, PreparedHMAC(hash_alg))


USER_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")  # the user ids the gateway accepts in tokens
ACCESS_CACHE_SIZE = 4096  # verified access tokens remembered
CACHEABLE_TOKEN_CHARS = 2048  # longer tokens are verified every time (bounds the cache's memory)


class TokenVerifier:
    """Verifies access and refresh tokens with the configured secrets."""

    def __init__(self, settings: Settings) -> None:
        use_prepared_hmac()
        self._access_cache: dict[str, Identity] = {}
        self.access_secret = settings.jwt_access_secret
        self.refresh_secret = settings.jwt_refresh_secret
        self.algorithms = list(settings.jwt_algorithms)
        self.leeway = settings.jwt_leeway
        self.issuer = settings.jwt_issuer or None
        self.audience = settings.jwt_audience or None

    def verify_access(self, token: str) -> Identity:
        identity = self._access_cache.get(token)
        if identity is not None and time.time() < identity.expires_at:
            return identity
        identity = self._verify(token, self.access_secret, "access")
        if len(token) <= CACHEABLE_TOKEN_CHARS:
            if len(self._access_cache) >= ACCESS_CACHE_SIZE:
                del self._access_cache[next(iter(self._access_cache))]  # the oldest entry
            self._access_cache[token] = identity
        return identity

    def verify_refresh(self, token: str) -> Identity:
        return self._verify(token, self.refresh_secret, "refresh")

    def _verify(self, token: str, secret: str, kind: str) -> Identity:
        if not secret:
            raise AuthError("INVALID_TOKEN", f"{kind} tokens cannot be verified: no secret configured")
        options: Any = {"require": ["exp"], "verify_aud": self.audience is not None}
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=self.algorithms,
                options=options,
                leeway=self.leeway,
                issuer=self.issuer,
                audience=self.audience,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("TOKEN_EXPIRED", "token expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError("INVALID_TOKEN", _reason(exc)) from None
        token_type = str(claims.get("type") or claims.get("typ") or "").lower()
        if kind == "access" and token_type == "refresh":
            raise AuthError("INVALID_TOKEN", "a refresh token is not an access token")
        if kind == "refresh" and token_type not in ("", "refresh"):
            raise AuthError("INVALID_TOKEN", "not a refresh token")
        user_id = claims.get("sub", claims.get("userId"))
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if not isinstance(user_id, str) or not USER_ID_RE.fullmatch(user_id):
            # It travels in X-User-Id, room names and Redis keys: visible ASCII only.
            raise AuthError("INVALID_TOKEN", "token has no usable sub/userId "
                                             "(1-128 visible ASCII characters)")
        jti = claims.get("jti")
        iat = claims.get("iat")
        return Identity(
            user_id=user_id,
            token=token,
            expires_at=float(claims["exp"]),
            issued_at=float(iat) if isinstance(iat, (int, float)) else None,
            jti=str(jti) if jti is not None else None,
        )


def _reason(exc: Exception) -> str:
    """A short, safe description (never the token itself)."""
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm not allowed"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature invalid"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks required claim {exc.claim}"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token issuer not accepted"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token audience not accepted"
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return "token issued in the future"
    if isinstance(exc, jwt.DecodeError):
        return "token malformed"
    return "token invalid"



class RevocationCheck(Protocol):
    def check(self, identity: Identity) -> bool: ...


def refuse_revoked(revocations: RevocationCheck, identity: Identity) -> None:
    """Raise TOKEN_REVOKED when ``identity``'s token was revoked (memory only, never waits)."""
    if revocations.check(identity):
        raise AuthError("TOKEN_REVOKED", "token revoked")


def check_access_token(tokens: TokenVerifier, revocations: RevocationCheck, token: str) -> Identity:
    """THE token check of sockets and gateway-served endpoints: verify, then revocation."""
    identity = tokens.verify_access(token)
    refuse_revoked(revocations, identity)
    return identity


REFRESH_PATH = "/api/auth/refresh"
REFRESH_COOKIE = "refreshToken"


def authenticate_http(tokens: TokenVerifier, public_paths: Sequence[str], headers: httputil.HTTPHeaders,
                      path: str) -> Identity | None:
    """An HTTP caller's identity, None when anonymous on a public path; raises AuthError."""
    bearer = bearer_token(headers.get("Authorization"))
    path = class_key(path)  # /api/auth/REFRESH and /api/auth/%72efresh are the refresh route
    if path.rstrip("/") == REFRESH_PATH:
        # Refresh tokens are checked at the edge: a forged one never reaches auth.
        cookie = _cookie(headers, REFRESH_COOKIE)
        if cookie:
            return tokens.verify_refresh(cookie)
        if bearer:
            return tokens.verify_refresh(bearer)
        raise AuthError("UNAUTHENTICATED", f"a refresh token (cookie {REFRESH_COOKIE} or Bearer) "
                                           "is required")
    public = any(is_under(path, prefix.lower()) for prefix in public_paths)
    if bearer is None:
        if public:
            return None
        raise AuthError("UNAUTHENTICATED", "a bearer token is required")
    try:
        return tokens.verify_access(bearer)
    except AuthError:
        if public:
            return None  # a bad token on a public route is ignored, never trusted
        raise

def _cookie(headers: httputil.HTTPHeaders, name: str) -> str | None:
    header = headers.get("Cookie")
    if not header:
        return None
    try:
        return httputil.parse_cookie(header).get(name)
    except Exception:  # a malformed Cookie header: no cookie
        return None
