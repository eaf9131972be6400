"""Settings: the validated, frozen result of every source, and the production checks."""

from __future__ import annotations

from urllib.parse import SplitResult

import ipaddress
import math
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any, Callable, Mapping
from urllib.parse import unquote, urlsplit

from tornado_gateway.cluster.redis_cluster import SCHEMES as CLUSTER_SCHEMES
from tornado_gateway.cluster.redis_cluster import parse_cluster_url
from tornado_gateway.config.options import MIB, SERVICES, ConfigError

# Secrets that ship in example files and must never reach production.
EXAMPLE_SECRETS = frozenset(
    {
        "your-access-secret",
        "your-refresh-secret",
        "your-secret",
        "changeme",
        "change-me",
        "secret",
        "example",
    }
)
MIN_SECRET_BYTES = 32




@dataclass(frozen=True)
class RateLimit:
    """``count`` requests per ``window`` seconds."""

    count: int
    window: float

    def __str__(self) -> str:
        return f"{self.count}/{self.window:g}"


@dataclass(frozen=True)
class Route:
    """One proxied prefix and where it goes."""

    prefix: str  # "/api/users", no trailing slash
    service: str  # name used in logs and metrics
    upstream: str  # scheme://host:port, no path
    upstream_path: str  # the upstream URL's own path, no trailing slash ("" for none)
    max_body_size: int
    timeout: float
    connect_timeout: float


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    log_level: str = "info"
    host: str = "0.0.0.0"
    port: int = 3000
    allowed_origins: tuple[str, ...] = ("http://localhost:5173",)
    jwt_access_secret: str = ""
    jwt_refresh_secret: str = ""
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway: float = 30.0
    public_paths: tuple[str, ...] = ("/api/auth",)
    redis_url: str | None = None  # None: single node, in memory
    routes: tuple[Route, ...] = ()
    upstream_connect_timeout: float = 2.0
    upstream_timeout: float = 30.0
    upstream_max_connections: int = 256
    upstream_idle_timeout: float = 4.0
    max_body_size: int = MIB
    media_max_body_size: int = 100 * MIB
    circuit_failures: int = 5
    circuit_cooldown: float = 10.0
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    rate_limit_user: RateLimit = RateLimit(300, 60)
    rate_limit_ip: RateLimit = RateLimit(120, 60)
    rate_limit_auth: RateLimit = RateLimit(10, 60)
    rate_limit_enabled: bool = True
    rate_limit_auth_paths: tuple[str, ...] = ("/api/auth/login", "/api/auth/register",
                                              "/api/auth/refresh")
    revocation_ttl: float = 7 * 86400.0
    ingress_max_body_size: int = 256 * 1024
    auth_timeout: float = 10.0
    typing_timeout: float = 6.0
    presence_ttl: float = 30.0
    drain_timeout: float = 20.0
    drain_grace: float = 2.0
    socket_fanout: str = "rooms"
    socket_rate_message: RateLimit = RateLimit(30, 10)
    socket_rate_typing: RateLimit = RateLimit(20, 10)
    socket_rate_join: RateLimit = RateLimit(60, 60)
    socket_rate_connect: RateLimit = RateLimit(60, 60)
    max_connections_per_ip: int = 200
    max_connections_per_user: int = 20
    socket_token_grace: float = 5.0
    socket_max_payload: int = 1_000_000
    membership_cache_ttl: float = 30.0
    internal_host: str = "127.0.0.1"
    internal_port: int = 3100
    internal_auth_user: str = ""
    internal_auth_password: str = field(default="", repr=False)
    internal_auth_key: str = field(default="", repr=False)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def single_node(self) -> bool:
        return self.redis_url is None


def _rate_limit(name: str, raw: str) -> RateLimit:
    count, slash, window = str(raw).partition("/")
    try:
        limit = RateLimit(int(count), float(window) if slash else 60.0)
    except ValueError:
        raise ConfigError(f"{name.upper()}={raw!r}: expected COUNT/SECONDS, e.g. 300/60") from None
    if limit.count < 1 or not limit.window > 0 or not math.isfinite(limit.window):
        raise ConfigError(f"{name.upper()}={raw!r}: count and window must be positive")
    return limit


def _non_negative(name: str, values: Mapping[str, Any]) -> int:
    value = int(values[name])
    if value < 0:
        raise ConfigError(f"{name.upper()}={value}: must not be negative (0: no cap)")
    return value


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(raw).split(",") if part.strip())


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in _csv(raw):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"TRUSTED_PROXIES: not an IP or CIDR: {part!r}") from None
    return tuple(nets)


def _origins(raw: str) -> tuple[str, ...]:
    origins = _csv(raw)
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if (parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc
                or parts.path not in ("", "/") or parts.query or parts.fragment
                or not _port_ok(parts)):
            raise ConfigError(f"ALLOWED_ORIGINS: not an origin (scheme://host[:port]): {origin!r}")
    return tuple(o.rstrip("/") for o in origins)


def _socket_fanout(value: object, redis_url: object) -> str:
    """rooms or broadcast; broadcast is refused on a Redis Cluster (REDIS_URL as given)."""
    mode = str(value).strip().lower()
    if mode not in ("rooms", "broadcast"):
        raise ConfigError(f"SOCKET_FANOUT={value}: must be rooms or broadcast")
    if mode == "broadcast" and urlsplit(str(redis_url).strip()).scheme in CLUSTER_SCHEMES:
        raise ConfigError("SOCKET_FANOUT=broadcast: not supported on a Redis Cluster (use rooms)")
    return mode


def _redis_url(values: Mapping[str, Any]) -> str | None:
    url = str(values["redis_url"]).strip()
    if url:
        if url == "memory://":
            return None
        parts = urlsplit(url)
        if parts.scheme in CLUSTER_SCHEMES:
            try:
                parse_cluster_url(url)
            except ValueError as exc:
                raise ConfigError(f"REDIS_URL: {exc}") from None
            return url
        if parts.scheme not in ("redis", "rediss", "unix", "redis+sentinel"):
            raise ConfigError(f"REDIS_URL: unsupported scheme {parts.scheme!r} (redis://, rediss://, "
                              "unix://, redis+sentinel://, redis+cluster:// or memory://)")
        if parts.scheme in ("redis", "rediss") and not _port_ok(parts):
            raise ConfigError("REDIS_URL: bad port")
        return url
    host = str(values["redis_host"]).strip()
    if not host:
        return None
    password = str(values["redis_password"])
    auth = f":{_quote(password)}@" if password else ""
    return f"redis://{auth}{host}:{int(values['redis_port'])}/0"


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _port_ok(parts: SplitResult) -> bool:
    try:
        parts.port
    except ValueError:
        return False
    return True


def _without_userinfo(url: str) -> str:
    """``url`` fit for an error message: any ``user:password@`` removed."""
    scheme, at, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if at and "@" in netloc:
        netloc = "<redacted>@" + netloc.rpartition("@")[2]
    return f"{scheme}{at}{netloc}{slash}{path}"


def _split_upstream(name: str, url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    shown = repr(_without_userinfo(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: not an http(s) URL: {shown}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name}: an upstream URL takes no query or fragment: {shown}")
    if not _port_ok(parts):
        raise ConfigError(f"{name}: bad port in {shown}")
    return f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")


def _routes(values: Mapping[str, Any]) -> tuple[Route, ...]:
    connect = float(values["upstream_connect_timeout"])
    total = float(values["upstream_timeout"])
    table: dict[str, Route] = {}
    services = {}
    bad: list[str] = []
    for service in SERVICES:
        key = f"{service}_service_url"
        services[service] = str(values[key])
        try:
            upstream, path = _split_upstream(key.upper(), services[service])
        except ConfigError as exc:
            bad.extend(exc.problems)
            continue
        limit = int(values["media_max_body_size"] if service == "media" else values["max_body_size"])
        table[f"/api/{service}"] = Route(
            f"/api/{service}", service, upstream, path, limit, total, connect
        )
    if bad:
        raise ConfigError(*bad)
    for spec in _csv(values["routes"]):
        head, *params = spec.split(";")
        prefix, eq, target = head.partition("=")
        prefix = "/" + prefix.strip().strip("/")
        if not eq or prefix == "/" or not target.strip():
            raise ConfigError(f"GATEWAY_ROUTES: expected PREFIX=SERVICE_OR_URL, got {spec!r}")
        target = target.strip()
        service = target if target in services else prefix.rsplit("/", 1)[-1]
        upstream, path = _split_upstream("GATEWAY_ROUTES", services.get(target, target))
        options = {"timeout": total, "max_body": int(values["max_body_size"]), "connect_timeout": connect}
        for param in params:
            key, _, raw = param.partition("=")
            key = key.strip()
            if key not in options:
                raise ConfigError(f"GATEWAY_ROUTES: unknown route option {key!r} in {spec!r}")
            try:
                options[key] = type(options[key])(raw.strip())
            except ValueError:
                raise ConfigError(f"GATEWAY_ROUTES: bad value for {key!r} in {spec!r}") from None
        table[prefix] = Route(prefix, service, upstream, path, int(options["max_body"]),
                              float(options["timeout"]), float(options["connect_timeout"]))
    # Longest prefix first, so routing can take the first match.
    return tuple(sorted(table.values(), key=lambda r: len(r.prefix), reverse=True))


RATE_LIMIT_FIELDS = tuple(f.name for f in fields(Settings) if f.type == "RateLimit")
DERIVED_FIELDS = frozenset({
    "env", "log_level", "allowed_origins", "jwt_algorithms", "public_paths", "redis_url", "routes",
    "socket_fanout",
    "trusted_proxies", "rate_limit_auth_paths", "max_connections_per_ip", "max_connections_per_user",
    *RATE_LIMIT_FIELDS})
#: Settings that are their option's value as parsed (same name, same type).
PLAIN_FIELDS = tuple(f.name for f in fields(Settings) if f.name not in DERIVED_FIELDS)


def build_settings(values: Mapping[str, Any]) -> Settings:
    """Validate raw option values into Settings; raises ConfigError naming every problem at once."""
    problems: list[str] = []
    fallback = {f.name: f.default for f in fields(Settings)}

    def attempt(name: str, compute: Callable[[], Any]) -> Any:
        try:
            return compute()
        except ConfigError as exc:
            problems.extend(exc.problems)
            return fallback[name]

    env = attempt("env", lambda: _env(values))
    level = attempt("log_level", lambda: _log_level(values))
    algorithms = attempt("jwt_algorithms", lambda: _algorithms(values))
    for name in ("port", "internal_port", "redis_port"):
        if not 0 <= int(values[name]) <= 65535:
            problems.append(f"{name.upper()}={values[name]}: not a port")
    positive = ("upstream_connect_timeout", "upstream_timeout", "auth_timeout", "typing_timeout",
                "presence_ttl", "max_body_size", "media_max_body_size", "revocation_ttl",
                "circuit_failures", "circuit_cooldown", "upstream_max_connections",
                "ingress_max_body_size", "socket_max_payload")
    for name in positive:
        if not float(values[name]) > 0 or not math.isfinite(float(values[name])):
            problems.append(f"{name.upper()}={values[name]}: must be positive")
    for name in ("drain_timeout", "drain_grace", "jwt_leeway", "socket_token_grace", "membership_cache_ttl",
                 "upstream_idle_timeout"):
        if not float(values[name]) >= 0 or not math.isfinite(float(values[name])):
            problems.append(f"{name.upper()}={values[name]}: must not be negative")
    # Settings derived by more than their option's type; every other field is its option's value.
    derived: dict[str, Any] = {
        "env": env,
        "log_level": level,
        "allowed_origins": attempt("allowed_origins", lambda: _origins(values["allowed_origins"])),
        "jwt_algorithms": algorithms,
        "public_paths": tuple("/" + p.strip("/") for p in _csv(values["public_paths"])),
        "redis_url": attempt("redis_url", lambda: _redis_url(values)),
        "socket_fanout": attempt("socket_fanout",
                                 lambda: _socket_fanout(values["socket_fanout"], values["redis_url"])),
        "routes": attempt("routes", lambda: _routes(values)),
        "trusted_proxies": attempt("trusted_proxies", lambda: _networks(values["trusted_proxies"])),
        "rate_limit_auth_paths": tuple("/" + p.strip("/") for p in _csv(values["rate_limit_auth_paths"])),
        "max_connections_per_ip": attempt("max_connections_per_ip",
                                          lambda: _non_negative("max_connections_per_ip", values)),
        "max_connections_per_user": attempt("max_connections_per_user",
                                            lambda: _non_negative("max_connections_per_user", values)),
        **{name: attempt(name, partial(_rate_limit, name, values[name])) for name in RATE_LIMIT_FIELDS},
    }
    settings = Settings(**{name: values[name] for name in PLAIN_FIELDS}, **derived)
    if settings.production:
        problems.extend(production_problems(settings))
    if problems:
        raise ConfigError(*problems)
    return settings


def _env(values: Mapping[str, Any]) -> str:
    env = str(values["env"]).strip().lower()
    if env not in ("development", "production", "test"):
        raise ConfigError(f"NODE_ENV={values['env']!r}: expected development, production or test")
    return env


def _log_level(values: Mapping[str, Any]) -> str:
    level = str(values["log_level"]).strip().lower()
    if level == "warn":
        level = "warning"
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"LOG_LEVEL={values['log_level']!r}: expected debug, info, warning or error")
    return level


def _algorithms(values: Mapping[str, Any]) -> tuple[str, ...]:
    algorithms = tuple(a.upper() for a in _csv(values["jwt_algorithms"]))
    bad = [a for a in algorithms if a not in ("HS256", "HS384", "HS512")]
    if bad or not algorithms:
        raise ConfigError(f"JWT_ALGORITHMS: only HS256, HS384, HS512 are supported, got {bad or '[]'}")
    return algorithms


def secret_values(settings: Settings) -> list[str]:
    """The configured secret values, for the log formatter to take out of every line."""
    values = [settings.jwt_access_secret, settings.jwt_refresh_secret,
              settings.internal_auth_password, settings.internal_auth_key]
    if settings.redis_url:
        password = urlsplit(settings.redis_url).password
        if password:
            values += [password, unquote(password)]
    return [v for v in values if v]


def weak_secret(secret: str) -> str | None:
    """Why ``secret`` is unfit for production, or None when it is fine."""
    if not secret:
        return "missing"
    if secret.strip().lower() in EXAMPLE_SECRETS or secret.lower().startswith("your-"):
        return "an example value"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"shorter than {MIN_SECRET_BYTES} bytes"
    return None


def check_production(settings: Settings) -> None:
    """Refuse settings that are tolerable in development only."""
    problems = production_problems(settings)
    if problems:
        raise ConfigError(*problems)


def production_problems(settings: Settings) -> list[str]:
    """What NODE_ENV=production refuses in ``settings``, one line each."""
    problems = []
    for name in ("jwt_access_secret", "jwt_refresh_secret"):
        why = weak_secret(getattr(settings, name))
        if why:
            problems.append(f"NODE_ENV=production: {name.upper()} is {why}")
    if "*" in settings.allowed_origins:
        problems.append("NODE_ENV=production: ALLOWED_ORIGINS must not contain '*'")
    if settings.jwt_access_secret and settings.jwt_access_secret == settings.jwt_refresh_secret:
        problems.append("NODE_ENV=production: JWT_ACCESS_SECRET and JWT_REFRESH_SECRET must differ")
    if settings.internal_port and not (settings.internal_auth_user and settings.internal_auth_password):
        problems.append(
            "NODE_ENV=production: INTERNAL_AUTH_USER and INTERNAL_AUTH_PASSWORD are required "
            "(or INTERNAL_PORT=0 to turn the internal listener off)"
        )
    return problems


def startup_warnings(settings: Settings) -> list[str]:
    """What a development node should say at start about its JWT secrets (production refuses these)."""
    if settings.production:
        return []
    effects = {"jwt_access_secret": "every access token will be refused (401 on HTTP, sockets refused)",
               "jwt_refresh_secret": "every POST /api/auth/refresh will be refused at the edge (401)"}
    out = []
    for name, effect in effects.items():
        why = weak_secret(getattr(settings, name))
        if why == "missing":
            out.append(f"{name.upper()} is not set: {effect}; set it to the secret the auth service signs with")
        elif why:
            out.append(f"{name.upper()} is {why}: tolerated in development, refused with NODE_ENV=production")
    return out

