"""Security headers on every response, and CORS for exactly the allowed origins.

helmet's defaults are the floor; for an API edge a few are stricter (see
README "Security headers"). An upstream that sets one of these headers on its
own response keeps its value (the proxy copies upstream headers over these
defaults), so e.g. the media service may relax Cross-Origin-Resource-Policy.
"""

from __future__ import annotations

from typing import Iterable

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy",
     "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
     "img-src 'self' data:; media-src 'self'; object-src 'none'; script-src 'none'; "
     "script-src-attr 'none'; style-src 'none'; upgrade-insecure-requests"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Origin-Agent-Cluster", "?1"),
    ("Referrer-Policy", "no-referrer"),
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-DNS-Prefetch-Control", "off"),
    ("X-Download-Options", "noopen"),
    ("X-Frame-Options", "DENY"),
    ("X-Permitted-Cross-Domain-Policies", "none"),
    ("X-XSS-Protection", "0"),
)
CORS_ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID, Idempotency-Key"
CORS_EXPOSE_HEADERS = (
    "X-Request-ID, Retry-After, RateLimit, RateLimit-Policy, "
    "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
)
CORS_MAX_AGE = "600"


class CorsPolicy:
    """Decides the CORS headers of a response from its request's Origin."""

    def __init__(self, allowed_origins: Iterable[str]) -> None:
        self.allowed = frozenset(allowed_origins)
        self.any_origin = "*" in self.allowed

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and (self.any_origin or origin in self.allowed)

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Headers for an actual (non-preflight) response."""
        headers = [("Vary", "Origin")]
        if origin is not None and self.allows(origin):
            headers += [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS),
            ]
        return headers

    def preflight_headers(self, origin: str | None, requested_headers: str | None) -> list[tuple[str, str]]:
        """Headers answering an allowed preflight (the caller checked ``allows``)."""
        return [
            ("Access-Control-Allow-Origin", origin or ""),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Allow-Methods", CORS_ALLOW_METHODS),
            ("Access-Control-Allow-Headers", _allowed_request_headers(requested_headers)),
            ("Access-Control-Max-Age", CORS_MAX_AGE),
            ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]


def _allowed_request_headers(requested: str | None) -> str:
    """Echo the requested header names (tokens only) beside our fixed list."""
    names = [h.strip() for h in (requested or "").split(",") if h.strip()]
    safe = [h for h in names if h.replace("-", "").isalnum() and len(h) <= 64]
    return ", ".join(dict.fromkeys([*CORS_ALLOW_HEADERS.split(", "), *safe]))
