"""tornado_gateway: the public edge of the chat application (HTTP proxy, JWT, Socket.IO)."""

__version__ = "0.1.0"
