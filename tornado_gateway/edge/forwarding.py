"""Who the client really is: trusted-proxy rules for X-Forwarded-* and the client IP.

A peer's ``X-Forwarded-For/-Proto/-Host`` are believed only when the peer's
address is in TRUSTED_PROXIES; then the client is the right-most address of
the chain that is not itself a trusted proxy. ``X-Real-Ip`` is never believed.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Sequence

from tornado.httputil import HTTPServerRequest


class ForwardingRules:
    """Applies TRUSTED_PROXIES to a request."""

    def __init__(self, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self.trusted = tuple(trusted)
        self._is_trusted = lru_cache(maxsize=4096)(self._check)

    def _check(self, address: str) -> bool:
        if not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def is_trusted(self, address: str) -> bool:
        return self._is_trusted(address)

    def peer_ip(self, request: HTTPServerRequest) -> str:
        """The TCP peer's address (tornado's remote_ip with xheaders off)."""
        return request.remote_ip or ""

    def client_ip(self, request: HTTPServerRequest) -> str:
        return self.client_ip_from(self.peer_ip(request), request.headers.get("X-Forwarded-For"))

    def client_ip_from(self, peer: str, forwarded_for: str | None) -> str:
        if not forwarded_for or not self.is_trusted(peer):
            return peer
        for hop in reversed(_split_chain(forwarded_for)):
            if not self.is_trusted(hop):
                return hop
        return peer

    def forwarded_headers(self, request: HTTPServerRequest) -> dict[str, str]:
        """The X-Forwarded-* headers to send upstream for this request."""
        peer = self.peer_ip(request)
        headers = request.headers
        if self.is_trusted(peer):
            chain = _split_chain(headers.get("X-Forwarded-For", ""))
            proto = headers.get("X-Forwarded-Proto", "").split(",")[0].strip() or request.protocol
            host = headers.get("X-Forwarded-Host", "").split(",")[0].strip() or request.host
        else:
            chain, proto, host = [], request.protocol, request.host
        if proto not in ("http", "https"):
            proto = request.protocol
        return {
            "X-Forwarded-For": ", ".join([*chain, peer]),
            "X-Forwarded-Proto": proto,
            "X-Forwarded-Host": host,
        }


def _split_chain(value: str) -> list[str]:
    hops = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            hops.append(str(ipaddress.ip_address(part)))
        except ValueError:
            # An unparsable hop ends what we can believe: everything left of it is dropped.
            hops.clear()
    return hops
