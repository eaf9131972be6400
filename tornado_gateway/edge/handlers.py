"""The gateway's own HTTP endpoints: liveness, readiness, presence."""

from __future__ import annotations

import tornado.web

from tornado_gateway.edge.identity import AuthError, bearer_token, check_access_token
from tornado_gateway.edge.responses import GatewayHandler
from tornado_gateway.errors import GatewayError
from tornado_gateway.realtime.payloads import EventError, check_user_ids


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


class PresenceHandler(GatewayHandler):
    """``GET /api/presence?userIds=a,b`` (Bearer token required)."""

    route_name = "presence"

    async def get(self) -> None:
        token = bearer_token(self.request.headers.get("Authorization"))
        if token is None:
            raise AuthError("UNAUTHENTICATED", "a Bearer token is required")
        identity = check_access_token(self.gateway.tokens, self.gateway.revocations, token)
        self.user_id = identity.user_id
        try:
            user_ids = check_user_ids(self.get_query_argument("userIds", ""))
        except EventError as exc:
            raise GatewayError(exc.code, exc.message, 400) from None
        except tornado.web.MissingArgumentError:
            raise GatewayError("VALIDATION_FAILED", "userIds is required", 400) from None
        self.write_json(200, {"presence": await self.gateway.realtime.presence.status(user_ids)})
