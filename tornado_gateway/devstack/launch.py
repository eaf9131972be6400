"""Start-up of ``--devstack``: its settings, the six stand-in servers, the gateway, and the block for a person.

Devstack defaults sit below every other source (a flag, the environment or
the config file wins): loopback, no Redis, random JWT secrets and internal
credentials per run. Each stand-in listens on the port of its
``*_SERVICE_URL`` and serves under that URL's own path, so the gateway proxies
to it exactly as to a real service.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import sys
import tempfile
from typing import Mapping, NoReturn, Sequence

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from tornado_gateway import config, server
from tornado_gateway.app import Gateway
from tornado_gateway.devstack.accounts import auth_routes, users_routes
from tornado_gateway.devstack.conversations import chats_routes, messages_routes
from tornado_gateway.devstack.media import media_routes, notifications_routes
from tornado_gateway.devstack.store import GROUP_CHAT_ID, SEED_PASSWORD, Store, Tokens
from tornado_gateway.devstack.web import Announcer, Context, NotFound, log_request

ROUTES = {"auth": auth_routes, "users": users_routes, "chats": chats_routes,
          "messages": messages_routes, "media": media_routes, "notifications": notifications_routes}
LOOPBACK = ("localhost", "127.0.0.1", "::1")
BANNER_TOKEN_TTL = 24 * 3600.0


def devstack_defaults() -> dict[str, object]:
    return {
        "host": "127.0.0.1",
        "drain_grace": 0.0,  # no load balancer in front: Ctrl-C stops at once
        "redis_host": "",  # memory mode unless REDIS_URL or REDIS_HOST is set
        "jwt_access_secret": secrets.token_urlsafe(48),
        "jwt_refresh_secret": secrets.token_urlsafe(48),
        "internal_auth_user": "devstack",
        "internal_auth_password": secrets.token_urlsafe(32),
    }


def load_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> config.Settings:
    """The gateway's settings in devstack mode (raises ConfigError naming every problem)."""
    argv = [a for a in argv if a != "--devstack"]
    problems: list[str] = []
    values = config.raw_values(argv, environ, devstack_defaults(), problems=problems)
    if str(values["env"]).strip().lower() == "production":
        raise config.ConfigError("--devstack is for development and refuses NODE_ENV=production")
    settings = config.validated(values, problems)
    if not settings.internal_port:
        problems.append("--devstack needs the internal listener (INTERNAL_PORT=0): "
                        "its services announce events there")
    taken = {settings.port: "PORT", settings.internal_port: "INTERNAL_PORT"}
    for service, route in service_routes(settings).items():
        name = f"{service.upper()}_SERVICE_URL"
        host, port = _host_port(route.upstream)
        if host not in LOOPBACK:
            problems.append(f"--devstack: {name} must point at this machine (localhost), its stand-in runs here")
        elif port in taken:
            problems.append(f"--devstack: {name} uses port {port}, as {taken[port]} does")
        taken[port] = name
    if problems:
        raise config.ConfigError(*problems)
    return settings


def service_routes(settings: config.Settings) -> dict[str, config.Route]:
    """The route of each of the six services (``/api/<service>``)."""
    by_prefix = {r.prefix: r for r in settings.routes}
    return {s: by_prefix[f"/api/{s}"] for s in config.SERVICES if f"/api/{s}" in by_prefix}


def _host_port(upstream: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(upstream)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _connect_host(host: str) -> str:
    """Where to connect to a listener bound to ``host`` (a wildcard means loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Devstack:
    """The six stand-in servers and what they share; lives as long as the gateway."""

    def __init__(self, settings: config.Settings):
        self.settings = settings
        self.store = Store()
        self.store.seed()
        self.tokens = Tokens(settings)
        self.media_dir = tempfile.mkdtemp(prefix="tornado_gateway-devstack-media-")
        internal = f"http://{_connect_host(settings.internal_host)}:{settings.internal_port}/internal/events"
        self.ctx = Context(settings, self.store, self.tokens,
                           Announcer(internal, settings.internal_auth_user, settings.internal_auth_password),
                           self.media_dir)
        self.servers: list[HTTPServer] = []
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        routes = service_routes(self.settings)
        self.ctx.auth_prefix = routes["auth"].prefix if "auth" in routes else "/api/auth"
        for service, route in routes.items():
            handlers = ROUTES[service](route.upstream_path)
            app = tornado.web.Application([(path, handler, {"ctx": self.ctx}) for path, handler in handlers],
                                          log_function=log_request, compress_response=False,
                                          default_handler_class=NotFound,
                                          default_handler_args={"ctx": self.ctx})
            host, port = _host_port(route.upstream)
            try:
                sockets = bind_sockets(port, host)
            except OSError as exc:
                raise server.StartupError(
                    f"cannot listen on {host}:{port} for the {service} stand-in ({exc.strerror}): "
                    f"stop what runs there or set {service.upper()}_SERVICE_URL to a free port") from None
            limit = max(self.settings.media_max_body_size, route.max_body_size) + 1
            http = HTTPServer(app, xheaders=False, max_body_size=limit)
            http.add_sockets(sockets)
            self.servers.append(http)
            self.ports[service] = port

    def ready(self, gateway: Gateway, port: int) -> None:
        """Called once the gateway listens: remember its URL, print the block for a person."""
        self.ctx.gateway_url = f"http://{_connect_host(self.settings.host)}:{port}"
        print(self.banner(self.ctx.gateway_url), file=sys.stderr, flush=True)

    def banner(self, url: str) -> str:
        alice = self.store.by_username["alice"]
        token = self.tokens.access(alice.id, BANNER_TOKEN_TTL)
        users = ", ".join(f"{u.username} ({u.id})" for u in self.store.users.values())
        services = ", ".join(f"{name} :{port}" for name, port in self.ports.items())
        origins = ", ".join(self.settings.allowed_origins)
        curl = f"curl -s -H {shlex.quote('Authorization: Bearer ' + token)} {url}/api/chats/{GROUP_CHAT_ID}"
        login = (f"curl -s -H 'Content-Type: application/json' -d "
                 f"'{{\"username\":\"alice\",\"password\":\"{SEED_PASSWORD}\"}}' {url}/api/auth/login")
        redis = "memory mode (single node, no Redis)" if self.settings.single_node else "Redis as configured"
        lines = [
            "",
            "tornado_gateway devstack: the gateway and stand-ins of the six services, data in memory",
            f"  URL       {url}   (Socket.IO at /socket.io/; allowed origins: {origins})",
            f"  services  {services}; {redis}",
            f"  users     {users}; password: {SEED_PASSWORD}",
            f"  chat      {GROUP_CHAT_ID} \"Devstack group\" (all three)",
            "  token     alice's access token, valid 24 h:",
            f"            {token}",
            f"  try       {curl}",
            f"  log in    {login}",
            "  stop      Ctrl-C (stdout carries the gateway's JSON log)",
            "",
        ]
        return "\n".join(lines)

    async def close(self) -> None:
        for http in self.servers:
            http.stop()
            await http.close_all_connections()
        self.ctx.announcer.close()
        shutil.rmtree(self.media_dir, ignore_errors=True)


async def run(settings: config.Settings) -> int:
    stack = Devstack(settings)
    try:
        stack.start()
        return await server.run(settings, on_listening=stack.ready)
    finally:
        await stack.close()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("--help", "-h", "--version") for a in argv[1:]):
        server.main([a for a in argv if a != "--devstack"])
    try:
        settings = load_settings(argv, os.environ)
    except config.ConfigError as exc:
        server.exit_config_error(exc)
    server.serve(settings, run)


__all__ = ["Devstack", "load_settings", "main", "run"]
