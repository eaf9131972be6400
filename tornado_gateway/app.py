"""The Gateway: one node's shared parts, and the public and internal applications.

A :class:`Gateway` is built from Settings and owns everything that lives as
long as the process: the Redis link, the token verifier, the forwarding and
CORS rules, the upstream client, and the realtime, limits and ingress parts.
Handlers receive it as their only argument.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import tornado.web

from tornado_gateway.edge.identity import TokenVerifier
from tornado_gateway.proxy.circuit import Circuits
from tornado_gateway.config import Settings
from tornado_gateway.edge.forwarding import ForwardingRules
from tornado_gateway.edge.responses import GatewayApplication, NotFoundHandler, log_request
from tornado_gateway.edge.handlers import HealthHandler, ReadyHandler
from tornado_gateway.internal.ingress import Ingress
from tornado_gateway.internal.listener import internal_handlers
from tornado_gateway.cluster.limits import Limits
from tornado_gateway.edge.handlers import PresenceHandler
from tornado_gateway.proxy.router import PublicRouter
from tornado_gateway.realtime.server import Realtime
from tornado_gateway.cluster.redis_link import RedisLink
from tornado_gateway.cluster.revocation import Revocations
from tornado_gateway.edge.security_headers import SECURITY_HEADERS, CorsPolicy
from tornado_gateway.upstream.client import PooledHTTPClient
from typing import Awaitable, Callable

log = logging.getLogger("tornado_gateway")


class Gateway:
    """Everything one gateway process shares between requests and sockets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node_id = uuid.uuid4().hex[:12]
        self.redis: RedisLink | None = RedisLink(settings.redis_url) if settings.redis_url else None
        self.tokens = TokenVerifier(settings)
        self.forwarding = ForwardingRules(settings.trusted_proxies)
        self.cors = CorsPolicy(settings.allowed_origins)
        self.security_headers = SECURITY_HEADERS
        self.limits = Limits(self.redis, settings)  # gateway.limits.allow(scope, key, RateLimit)
        self.revocations = Revocations(self.redis, settings.revocation_ttl)
        self.ingress = Ingress(self)  # gateway:events subscriber + POST /internal/events
        self.circuits = Circuits(settings.circuit_failures, settings.circuit_cooldown)
        # Keep-alive pools per upstream; why not a built-in client: upstream.py's docstring.
        self.http_client = PooledHTTPClient(
            force_instance=True,
            max_connections_per_host=settings.upstream_max_connections,
            idle_timeout=settings.upstream_idle_timeout,
        )
        self.draining = False
        self.stopping = False  # SIGTERM came: not ready, though still serving for DRAIN_GRACE
        self.in_flight = 0  # HTTP requests being proxied right now
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_hooks: list[Callable[[], Awaitable[None]]] = []  # async callbacks run when the drain starts
        self.realtime = Realtime(self)  # Socket.IO server, presence, emit_local/disconnect_local
        self.on_drain(self.realtime.drain)

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        if self.redis is None:
            log.warning("no Redis configured: single-node mode with in-memory state "
                        "(Socket.IO rooms, presence and limits are local to this process)")
        else:
            await self.redis.start()
        await self.revocations.start()
        await self.ingress.start()
        await self.realtime.start()

    async def drain(self, timeout: float) -> None:
        """Turn not-ready, run the ``on_drain`` callbacks, let in-flight requests finish.

        ``timeout`` bounds all of it: a callback still running when it ends is
        cancelled. server.py has already stopped the public listener and
        closes the remaining connections afterwards.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.draining = True
        for hook in self._drain_hooks:
            try:
                await asyncio.wait_for(hook(), timeout=max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                log.warning("drain timeout: drain callback %r did not finish", hook)
            except Exception:
                log.exception("drain hook %r failed", hook)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(deadline - loop.time(), 0))
        except asyncio.TimeoutError:
            log.warning("drain timeout: %d request(s) still in flight", self.in_flight)

    def on_drain(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``await callback()`` when SIGTERM starts the drain, in registration order.

        The place for anything that must happen before the process exits:
        telling and closing Socket.IO sockets, withdrawing presence. Callbacks
        run after readiness turned 503 and the public listener stopped
        accepting, while in-flight HTTP requests still run, and share the
        DRAIN_TIMEOUT with them.
        """
        self._drain_hooks.append(callback)

    async def close(self) -> None:
        await self.ingress.close()
        await self.realtime.close()
        if self.redis is not None:
            await self.redis.close()
        self.http_client.close()

    def request_started(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    # -- readiness -------------------------------------------------------

    def readiness(self) -> tuple[bool, dict]:
        checks: dict[str, dict] = {"draining": {"ok": not (self.stopping or self.draining)}}
        if self.redis is None:
            checks["redis"] = {"ok": True, "mode": "memory"}
        else:
            checks["redis"] = {"ok": self.redis.up}
            if not self.redis.up:
                checks["redis"]["error"] = "unreachable"
        checks["limits"] = self.limits.readiness()
        checks["events"] = self.ingress.readiness()
        checks["revocations"] = self.revocations.readiness()
        return all(c["ok"] for c in checks.values()), checks

    # -- applications ----------------------------------------------------

    def public_router(self) -> PublicRouter:
        """The public listener: the application's own paths, everything else to the proxy."""
        handlers = [
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler),
            *self.realtime.handlers(),  # /socket.io/
            (r"/api/presence", PresenceHandler),
        ]
        return PublicRouter(self, self._application(handlers), "|".join(path for path, _ in handlers),
                            self.realtime.upgrades)

    def internal_app(self) -> tornado.web.Application:
        return self._application(internal_handlers(self.settings))

    def _application(self, handlers: list) -> tornado.web.Application:
        app = GatewayApplication(
            handlers,
            default_handler_class=NotFoundHandler,
            log_function=log_request,
            compress_response=False,
            serve_traceback=False,
        )
        app.gateway = self  # handlers reach the node through self.application
        return app

