"""Start-up and shutdown: settings, logging, listeners, signals, drain.

``main`` turns configuration errors into one line on stderr and exit code 2.
SIGTERM/SIGINT drain the node (see README "Draining") and exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from typing import Sequence

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from tornado_gateway import config
from tornado_gateway.app import Gateway
from tornado_gateway.logs import setup_logging

log = logging.getLogger("tornado_gateway")
IDLE_CONNECTION_TIMEOUT = 75.0  # longer than common client/proxy keep-alive timeouts


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("--help", "-h") for a in argv[1:]):
        config.make_parser().print_help(sys.stdout)
        sys.exit(0)
    try:
        settings = config.load(argv)
    except config.ConfigError as exc:
        print(f"tornado_gateway: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level)
    _install_fast_loop()
    try:
        code = asyncio.run(run(settings))
    except StartupError as exc:
        log.error("start-up failed: %s", exc)
        code = 1
    sys.exit(code)


class StartupError(Exception):
    """The node cannot start (e.g. its port is taken); logged as one line."""


def _install_fast_loop() -> None:
    try:
        import uvloop
    except ImportError:  # not on this platform: asyncio's loop is fine
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _bind(port: int, host: str, what: str) -> list[socket.socket]:
    try:
        return bind_sockets(port, host or None, backlog=1024)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None


async def run(settings: config.Settings) -> int:
    gateway = Gateway(settings)
    public_sockets = _bind(settings.port, settings.host, "public")
    internal_sockets = (
        _bind(settings.internal_port, settings.internal_host, "internal")
        if settings.internal_port else []
    )
    await gateway.start()
    public = HTTPServer(
        gateway.public_app(),
        xheaders=False,  # forwarding.py applies TRUSTED_PROXIES instead
        idle_connection_timeout=IDLE_CONNECTION_TIMEOUT,
        max_body_size=max(settings.max_body_size, settings.media_max_body_size,
                          *(r.max_body_size for r in settings.routes)),
    )
    public.add_sockets(public_sockets)
    internal = None
    if internal_sockets:
        internal = HTTPServer(gateway.internal_app(), xheaders=False)
        internal.add_sockets(internal_sockets)
    log.info("listening on %s:%d (internal %s:%s), node %s", settings.host, settings.port,
             settings.internal_host, settings.internal_port or "off", gateway.node_id)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    # A second signal during the drain ends the process at once.
    loop.add_signal_handler(signal.SIGTERM, lambda: sys.exit(1))

    log.info("draining (timeout %gs)", settings.drain_timeout)
    public.stop()  # no new connections
    await gateway.drain(settings.drain_timeout)
    await public.close_all_connections()
    if internal is not None:
        internal.stop()
        await internal.close_all_connections()
    await gateway.close()
    log.info("drained; exiting")
    return 0
