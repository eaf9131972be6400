"""The option table: every setting's name, environment variables, type, default and help."""

from __future__ import annotations

from typing import Sequence

SERVICES = ("auth", "users", "chats", "messages", "media", "notifications")
DEFAULT_SERVICE_PORTS = dict(zip(SERVICES, range(3001, 3007)))
MIB = 1024 * 1024


class ConfigError(Exception):
    """Settings are unknown, malformed or unsafe: ``problems`` holds one line for each."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


# (option name, environment variables, type, default, help). The first
# environment variable is the canonical one; later ones are aliases.
_OPTIONS: Sequence[tuple[str, tuple[str, ...], type, object, str]] = (
    ("env", ("NODE_ENV", "GATEWAY_ENV"), str, "development",
     "development or production; production refuses weak settings"),
    ("log_level", ("LOG_LEVEL",), str, "info", "debug, info, warning or error"),
    ("host", ("HOST",), str, "0.0.0.0", "public listener address"),
    ("port", ("PORT",), int, 3000, "public listener port"),
    ("allowed_origins", ("ALLOWED_ORIGINS",), str, "http://localhost:5173",
     "comma-separated exact origins allowed for CORS and Socket.IO"),
    ("jwt_access_secret", ("JWT_ACCESS_SECRET",), str, "",
     "HS secret of access tokens"),
    ("jwt_refresh_secret", ("JWT_REFRESH_SECRET",), str, "",
     "HS secret of refresh tokens"),
    ("jwt_algorithms", ("JWT_ALGORITHMS",), str, "HS256",
     "comma-separated accepted HMAC algorithms (HS256, HS384, HS512)"),
    ("jwt_issuer", ("JWT_ISSUER",), str, "", "required iss claim (empty: not checked)"),
    ("jwt_audience", ("JWT_AUDIENCE",), str, "", "required aud claim (empty: not checked)"),
    ("jwt_leeway", ("JWT_LEEWAY",), float, 30.0, "clock leeway for exp/nbf/iat, seconds"),
    ("public_paths", ("PUBLIC_PATHS",), str, "/api/auth",
     "comma-separated path prefixes reachable without a token"),
    ("redis_url", ("REDIS_URL",), str, "",
     "redis://, rediss://, redis+sentinel://, redis+cluster://h1:p1,h2:p2 or memory://; "
     "overrides REDIS_HOST/PORT/PASSWORD"),
    ("redis_host", ("REDIS_HOST",), str, "localhost", "Redis host; empty runs single-node"),
    ("redis_port", ("REDIS_PORT",), int, 6379, "Redis port"),
    ("redis_password", ("REDIS_PASSWORD",), str, "", "Redis password"),
    *(
        (f"{name}_service_url", (f"{name.upper()}_SERVICE_URL",), str,
         f"http://localhost:{port}", f"base URL of the {name} service")
        for name, port in DEFAULT_SERVICE_PORTS.items()
    ),
    ("routes", ("GATEWAY_ROUTES",), str, "",
     "extra or replacement routes: 'PREFIX=SERVICE_OR_URL[;timeout=S][;max_body=B]', comma-separated"),
    ("upstream_connect_timeout", ("UPSTREAM_CONNECT_TIMEOUT",), float, 2.0,
     "seconds to connect to an upstream"),
    ("upstream_timeout", ("UPSTREAM_TIMEOUT",), float, 30.0,
     "seconds for a whole upstream request"),
    ("upstream_max_connections", ("UPSTREAM_MAX_CONNECTIONS",), int, 256,
     "open connections per upstream host; more requests wait (counts as connect time)"),
    ("upstream_idle_timeout", ("UPSTREAM_IDLE_TIMEOUT",), float, 4.0,
     "seconds an idle keep-alive upstream connection is kept (below the upstream's own)"),
    ("max_body_size", ("MAX_BODY_SIZE",), int, MIB, "request body limit, bytes"),
    ("media_max_body_size", ("MEDIA_MAX_BODY_SIZE",), int, 100 * MIB,
     "request body limit of /api/media, bytes"),
    ("circuit_failures", ("CIRCUIT_FAILURES",), int, 5,
     "consecutive connect failures/timeouts that open an upstream's circuit"),
    ("circuit_cooldown", ("CIRCUIT_COOLDOWN",), float, 10.0,
     "seconds an open circuit refuses requests before one probe is let through"),
    ("trusted_proxies", ("TRUSTED_PROXIES",), str, "",
     "comma-separated IPs/CIDRs whose X-Forwarded-* headers are believed"),
    ("rate_limit_user", ("RATE_LIMIT_USER",), str, "300/60", "requests/window-seconds per user"),
    ("rate_limit_ip", ("RATE_LIMIT_IP",), str, "120/60", "requests/window-seconds per client IP"),
    ("rate_limit_auth", ("RATE_LIMIT_AUTH",), str, "10/60",
     "requests/window-seconds per IP for login, register and refresh"),
    ("rate_limit_enabled", ("RATE_LIMIT_ENABLED",), bool, True, "turn HTTP rate limiting on/off"),
    ("rate_limit_auth_paths", ("RATE_LIMIT_AUTH_PATHS",), str,
     "/api/auth/login,/api/auth/register,/api/auth/refresh",
     "comma-separated paths limited per IP by RATE_LIMIT_AUTH instead of the user/IP class"),
    ("revocation_ttl", ("REVOCATION_TTL",), float, 7 * 86400.0,
     "seconds a session:revoke is kept; at least the longest token lifetime"),
    ("ingress_max_body_size", ("INGRESS_MAX_BODY_SIZE",), int, 256 * 1024,
     "body limit of POST /internal/events, bytes"),
    ("auth_timeout", ("AUTH_TIMEOUT",), float, 10.0,
     "seconds a socket may stay unauthenticated"),
    ("typing_timeout", ("TYPING_TIMEOUT",), float, 6.0, "seconds before typing auto-stops"),
    ("presence_ttl", ("PRESENCE_TTL",), float, 30.0,
     "seconds before a dead node's users turn offline"),
    ("drain_timeout", ("DRAIN_TIMEOUT",), float, 20.0,
     "seconds from SIGTERM until in-flight requests are cut and the process exits"),
    ("drain_grace", ("DRAIN_GRACE",), float, 2.0,
     "seconds after SIGTERM that /readyz answers 503 while the public listener still serves"),
    ("socket_fanout", ("SOCKET_FANOUT",), str, "rooms",
     "rooms: a node hears only the rooms of its sockets; broadcast: every node hears every event"),
    ("socket_rate_message", ("SOCKET_RATE_MESSAGE",), str, "30/10",
     "message:send/message:read/reaction:set/chat:create per user per window-seconds"),
    ("socket_rate_typing", ("SOCKET_RATE_TYPING",), str, "20/10",
     "typing:start/typing:stop per user per window-seconds"),
    ("socket_rate_join", ("SOCKET_RATE_JOIN",), str, "60/60",
     "chat:join/chat:leave per user per window-seconds"),
    ("socket_rate_connect", ("SOCKET_RATE_CONNECT",), str, "60/60",
     "Socket.IO connection attempts per client IP per window-seconds"),
    ("max_connections_per_ip", ("MAX_CONNECTIONS_PER_IP",), int, 200,
     "open sockets per client IP on one node (0: no cap)"),
    ("max_connections_per_user", ("MAX_CONNECTIONS_PER_USER",), int, 20,
     "open sockets per user on one node (0: no cap)"),
    ("socket_token_grace", ("SOCKET_TOKEN_GRACE",), float, 5.0,
     "seconds a socket whose token expired may re-authenticate before it is closed"),
    ("socket_max_payload", ("SOCKET_MAX_PAYLOAD",), int, 1_000_000,
     "largest Socket.IO packet read from a client, bytes (Socket.IO's own default, 1 MB); "
     "larger ones close the transport, smaller invalid ones are answered VALIDATION_FAILED"),
    ("membership_cache_ttl", ("MEMBERSHIP_CACHE_TTL",), float, 30.0,
     "seconds a positive chat membership check is reused"),
    ("internal_host", ("INTERNAL_HOST",), str, "127.0.0.1", "internal listener address"),
    ("internal_port", ("INTERNAL_PORT",), int, 3100, "internal listener port (0: off)"),
    ("internal_auth_user", ("INTERNAL_AUTH_USER",), str, "", "internal listener user"),
    ("internal_auth_password", ("INTERNAL_AUTH_PASSWORD",), str, "",
     "internal listener password"),
    ("internal_auth_key", ("INTERNAL_AUTH_KEY",), str, "",
     "private key for Digest nonces (empty: random per process)"),
)

SECRET_OPTIONS = frozenset(
    {"jwt_access_secret", "jwt_refresh_secret", "redis_password", "internal_auth_password",
     "internal_auth_key", "redis_url"}
)

# The areas --help and docs/configuration.md group the options by. An option
# missing here still appears, under "Other".
AREAS: Sequence[tuple[str, tuple[str, ...]]] = (
    ("Process and public listener", ("env", "log_level", "host", "port", "drain_timeout", "drain_grace")),
    ("Authentication", ("jwt_access_secret", "jwt_refresh_secret", "jwt_algorithms", "jwt_issuer",
                        "jwt_audience", "jwt_leeway", "public_paths", "revocation_ttl")),
    ("Browsers and proxies", ("allowed_origins", "trusted_proxies")),
    ("Redis", ("redis_url", "redis_host", "redis_port", "redis_password", "socket_fanout")),
    ("Services and routes", (*(f"{name}_service_url" for name in SERVICES), "routes",
                             "upstream_connect_timeout", "upstream_timeout", "upstream_max_connections",
                             "upstream_idle_timeout", "max_body_size", "media_max_body_size",
                             "circuit_failures", "circuit_cooldown")),
    ("HTTP rate limits", ("rate_limit_user", "rate_limit_ip", "rate_limit_auth", "rate_limit_enabled",
                          "rate_limit_auth_paths")),
    ("Socket.IO", ("auth_timeout", "typing_timeout", "presence_ttl", "socket_rate_message",
                   "socket_rate_typing", "socket_rate_join", "socket_rate_connect", "max_connections_per_ip",
                   "max_connections_per_user", "socket_token_grace", "socket_max_payload",
                   "membership_cache_ttl")),
    ("Internal listener and event ingress", ("internal_host", "internal_port", "internal_auth_user",
                                             "internal_auth_password", "internal_auth_key",
                                             "ingress_max_body_size")),
)


def by_area() -> list[tuple[str, list[tuple[str, tuple[str, ...], type, object, str]]]]:
    """The option table grouped by AREAS, in their order; unlisted options last, under "Other"."""
    rows = {row[0]: row for row in _OPTIONS}
    groups = [(area, [rows[name] for name in names if name in rows]) for area, names in AREAS]
    listed = {name for _, names in AREAS for name in names}
    other = [row for row in _OPTIONS if row[0] not in listed]
    return groups + ([("Other", other)] if other else [])
