"""The gateway's own error envelope and codes (upstream errors pass through untouched)."""

from __future__ import annotations

from tornado_gateway.codec import dumps_bytes

# HTTP status of each code the gateway itself produces.
HTTP_STATUS = {
    "BAD_REQUEST": 400,
    "BAD_PATH": 400,
    "UNAUTHENTICATED": 401,
    "INVALID_TOKEN": 401,
    "TOKEN_EXPIRED": 401,
    "TOKEN_REVOKED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "LENGTH_REQUIRED": 411,
    "PAYLOAD_TOO_LARGE": 413,
    "VALIDATION_FAILED": 400,
    "RATE_LIMITED": 429,
    "INTERNAL": 500,
    "UPSTREAM_UNAVAILABLE": 502,
    "CIRCUIT_OPEN": 503,
    "DRAINING": 503,
    "UPSTREAM_TIMEOUT": 504,
}


class GatewayError(Exception):
    """An error the gateway answers itself, as JSON, with a code from HTTP_STATUS."""

    def __init__(self, code: str, message: str, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or HTTP_STATUS.get(code, 500)
        self.headers = headers or {}


JSON_CONTENT_TYPE = "application/json; charset=utf-8"


def error_body(code: str, message: str, request_id: str | None) -> bytes:
    """``{"error":{"code","message","requestId"}}`` as bytes."""
    return dumps_bytes({"error": {"code": code, "message": message, "requestId": request_id}})
