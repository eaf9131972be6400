"""The public listener's delegate: the application's own paths, every other path to the proxy."""

from __future__ import annotations

import tornado.web

import re

from tornado import httputil

from tornado_gateway.edge.responses import DelegateRelay
from tornado_gateway.proxy.exchange import ProxyExchange
from tornado_gateway.proxy.request import ProxyRequest
from tornado_gateway.parts import GatewayParts
from typing import cast, Any, Awaitable, Protocol


class Upgrades(Protocol):
    """Takes a request of an application path over from its head (a websocket upgrade it
    answers on the connection), or leaves it to the application (False)."""

    def take(self, request_conn: Any, start_line: httputil.RequestStartLine,
             headers: httputil.HTTPHeaders) -> bool: ...

    def take_transport(self, transport: Any, start_line: httputil.RequestStartLine,
                       headers: httputil.HTTPHeaders, peer_ip: str) -> bool:
        """The same for the first request of a connection still on its asyncio transport."""
        ...


_TAKEN = httputil.HTTPMessageDelegate()  # what a taken request's relay passes nothing to


class PublicRouter(httputil.HTTPServerConnectionDelegate):
    """The public listener: the application's own paths, every other path to the proxy.

    Chooses from the request line alone, so a proxied request never builds the
    ``HTTPServerRequest`` the application needs (it parses and copies the
    query arguments and costs about as much as the rest of the routing).
    """

    def __init__(self, gateway: GatewayParts, app: tornado.web.Application, app_paths: str,
                 upgrades: Upgrades | None = None) -> None:
        self.gateway = gateway
        self.app = app
        self.app_paths = re.compile(app_paths)
        self.upgrades = upgrades

    def start_request(self, server_conn: Any, request_conn: Any) -> httputil.HTTPMessageDelegate:
        return _PublicRequest(self, server_conn, request_conn)


class _PublicRequest(DelegateRelay):
    """Hands one request to the application or to a ProxyExchange, once its head arrived."""

    def __init__(self, router: PublicRouter, server_conn: Any, request_conn: Any) -> None:
        self.router = router
        self.server_conn = server_conn
        self.request_conn = request_conn

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        router = self.router
        line = cast(httputil.RequestStartLine, start_line)  # a server reads requests
        if router.app_paths.fullmatch(line.path.partition("?")[0]):
            upgrades = router.upgrades
            if upgrades is not None and upgrades.take(self.request_conn, line, headers):
                self.delegate = _TAKEN  # the connection is detached: nothing more comes
                return None
            self.delegate = router.app.start_request(self.server_conn, self.request_conn)
        else:
            request = ProxyRequest(self.request_conn, line, headers)
            self.delegate = ProxyExchange(router.gateway, request)
        return self.delegate.headers_received(start_line, headers)


