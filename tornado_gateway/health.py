"""Liveness (``/healthz``) and readiness (``/readyz``) of this node."""

from __future__ import annotations

from tornado_gateway.handlers import GatewayHandler


class HealthHandler(GatewayHandler):
    """200 while the process runs; checks nothing else."""

    route_name = "health"

    def get(self) -> None:
        self.write_json(200, {"status": "ok"})

    head = get


class ReadyHandler(GatewayHandler):
    """200 when every dependency is fine, else 503 with per-dependency detail."""

    route_name = "ready"

    def get(self) -> None:
        ready, checks = self.gateway.readiness()
        self.write_json(200 if ready else 503, {"status": "ready" if ready else "not_ready",
                                                "checks": checks})

    head = get
