"""The Gateway's parts as the other modules see them (``typing.Protocol``, no runtime import)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tornado_gateway.cluster.limits import Limits
    from tornado_gateway.cluster.redis_link import RedisLink
    from tornado_gateway.cluster.revocation import Revocations
    from tornado_gateway.config import Settings
    from tornado_gateway.edge.forwarding import ForwardingRules
    from tornado_gateway.edge.identity import TokenVerifier
    from tornado_gateway.edge.security_headers import CorsPolicy
    from tornado_gateway.internal.ingress import Ingress
    from tornado_gateway.proxy.circuit import Circuits
    from tornado_gateway.realtime.server import Realtime
    from tornado_gateway.upstream.client import PooledHTTPClient


class GatewayParts(Protocol):
    """What one gateway process shares between requests and sockets (``app.Gateway``)."""

    settings: Settings
    node_id: str
    redis: RedisLink | None
    tokens: TokenVerifier
    forwarding: ForwardingRules
    cors: CorsPolicy
    security_headers: tuple[tuple[str, str], ...]
    limits: Limits
    revocations: Revocations
    ingress: Ingress
    circuits: Circuits
    http_client: PooledHTTPClient
    realtime: Realtime
    draining: bool

    def request_started(self) -> None: ...

    def request_finished(self) -> None: ...

    def readiness(self) -> tuple[bool, dict]: ...
