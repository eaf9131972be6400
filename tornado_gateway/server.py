"""Start-up and shutdown: settings, logging, listeners, signals, drain.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
import time
from typing import Any, Awaitable, Callable, Coroutine, NoReturn, Sequence

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets

from tornado_gateway import config, tornado_compat
from tornado_gateway.config import usage
from tornado_gateway.app import Gateway
from tornado_gateway.edge.responses import DelegateRelay
from tornado_gateway.logs import setup_logging
from tornado_gateway.proxy.listener import PublicListener

log = logging.getLogger("tornado_gateway")
IDLE_CONNECTION_TIMEOUT = 75.0  # longer than common client/proxy keep-alive timeouts
IDLE_SWEEPS = 8  # sweeps for idle connections per IDLE_CONNECTION_TIMEOUT
LISTEN_BACKLOG = 1024  # a connect storm's SYNs wait in the kernel, not for a retransmit
# What a client connection reads per recv. Every read allocates and zeroes a buffer of this
# size (IOStream.read_chunk_size, Tornado's default 64 KiB): a request head fits in far less.
# A request with a body switches its connection to UPLOAD_READ_SIZE (proxy.exchange).
PUBLIC_READ_SIZE = 16 * 1024
FULL_COLLECTION_EVERY = 100  # generation-1 collections per full one (CPython's default: 10)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("--help", "-h", "--version") for a in argv[1:]):
        text = usage.render() if any(a in ("--help", "-h") for a in argv[1:]) else usage.version() + "\n"
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. `--help | head`
            sys.stderr.close()
        sys.exit(0)
    try:
        settings = config.load(argv)
    except config.ConfigError as exc:
        exit_config_error(exc)
    serve(settings, run)


def exit_config_error(exc: config.ConfigError) -> NoReturn:
    """Every problem, one line each, on stderr; exit code 2."""
    for problem in exc.problems or [str(exc)]:
        print(f"tornado_gateway: configuration error: {problem}", file=sys.stderr)
    sys.exit(2)


def serve(settings: config.Settings, runner: Callable[[config.Settings], Coroutine[Any, Any, int]]) -> NoReturn:
    """Set up logging and the loop, run ``runner(settings)`` and exit with its code."""
    setup_logging(settings.log_level, secrets=config.secret_values(settings))
    for warning in config.startup_warnings(settings):
        log.warning(warning)
    _install_fast_loop()
    try:
        code = asyncio.run(runner(settings))
    except StartupError as exc:
        log.error("start-up failed: %s", exc)
        code = 1
    except KeyboardInterrupt:  # SIGINT during the drain: one line, no traceback
        log.warning("interrupted while draining")
        code = 1
    except Exception:  # a bug: still one JSON line (redacted like every other), not a bare traceback
        log.exception("fatal error")
        code = 1
    sys.exit(code)


def _tune_collector() -> None:
    """Move what start-up made (modules, classes, settings, the app) out of the cycle collector's
    sight, and make full collections ten times rarer: a connect storm creates long-lived objects
    fast enough that every tenth generation-1 collection became a full one (docs/design-notes.md)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


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
        return bind_sockets(port, host or None, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None


class DrainableHTTPServer(HTTPServer):
    """An HTTPServer that tells busy connections from idle keep-alive ones.

    A connection is busy from the moment a request's headers arrive until
    tornado starts waiting for its next request (``start_request`` again).
    ``drain`` closes idle connections at once and busy ones as soon as their
    response is done, so nothing in flight is cut before the timeout.
    """

    _busy: set | None = None
    _draining = False
    _all_closed: asyncio.Event | None = None
    _waiting: dict | None = None  # connection -> when it started waiting for a request's head
    _sweeper: PeriodicCallback | None = None

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        """HTTPServer's, but a connection waiting too long for a request's head is closed by
        one periodic sweep (``_close_idle``) instead of Tornado's ``header_timeout``, which
        wraps every head read in ``gen.with_timeout`` (a timer and two futures per request)."""
        super().initialize(*args, **kwargs)
        self.idle_timeout = float(self.conn_params.header_timeout or IDLE_CONNECTION_TIMEOUT)
        self.conn_params.header_timeout = None

    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        stream.read_chunk_size = min(PUBLIC_READ_SIZE, stream.max_buffer_size // 2)
        # HTTP1Connection turns Nagle off when a response finishes and on again after it:
        # two setsockopt calls per request. Responses go out as whole writes (the head with
        # the first body chunk), so a client connection keeps TCP_NODELAY for its whole life.
        stream.set_nodelay(True)
        stream.set_nodelay = _keep_nodelay  # type: ignore[method-assign]
        super().handle_stream(stream, address)

    def start_request(self, server_conn: Any, request_conn: Any) -> httputil.HTTPMessageDelegate:
        busy = self._busy_set()
        busy.discard(server_conn)  # the previous response (if any) is done
        if self._draining:
            asyncio.ensure_future(server_conn.close())
        waiting = self._waiting_since()
        waiting[server_conn] = time.monotonic()
        return _MarkBusy(super().start_request(server_conn, request_conn), busy, server_conn, waiting)

    def on_close(self, server_conn: Any) -> None:
        self._busy_set().discard(server_conn)
        self._waiting_since().pop(server_conn, None)
        super().on_close(server_conn)
        if self._all_closed is not None and not tornado_compat.server_connections(self):
            self._all_closed.set()

    def _waiting_since(self) -> dict:
        if self._waiting is None:
            self._waiting = {}
            self._sweeper = PeriodicCallback(self._close_idle, self.idle_timeout * 1000 / IDLE_SWEEPS)
            self._sweeper.start()
        return self._waiting

    def _close_idle(self) -> None:
        """Close the connections that waited longer than the idle timeout for a request's head
        (between idle_timeout and idle_timeout * (1 + 1/IDLE_SWEEPS) after their last response)."""
        older_than = time.monotonic() - self.idle_timeout
        for server_conn, since in list(self._waiting_since().items()):
            if since < older_than:
                del self._waiting_since()[server_conn]
                asyncio.ensure_future(server_conn.close())

    def stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()

    def _busy_set(self) -> set:
        if self._busy is None:
            self._busy = set()
        return self._busy

    def start_drain(self) -> None:
        """Stop accepting and close the idle keep-alive connections."""
        self.stop()
        self._draining = True
        self._all_closed = asyncio.Event()
        if not tornado_compat.server_connections(self):
            self._all_closed.set()
        for conn in list(tornado_compat.server_connections(self)):
            if conn not in self._busy_set():
                asyncio.ensure_future(conn.close())

    async def wait_drained(self, timeout: float) -> int:
        """Wait up to ``timeout`` for every connection to close; cut the rest. Returns how many were cut."""
        try:
            assert self._all_closed is not None  # start_drain() ran
            await asyncio.wait_for(self._all_closed.wait(), timeout=max(timeout, 0))
        except asyncio.TimeoutError:
            pass
        cut = len(tornado_compat.server_connections(self))
        await self.close_all_connections()
        self.stop_sweeping()
        return cut


def _keep_nodelay(value: bool) -> None:
    """Stands in for ``IOStream.set_nodelay`` on client connections (always on)."""


class _MarkBusy(DelegateRelay):
    """Passes a request through, marking its connection busy once headers arrived."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, busy: set, server_conn: Any,
                 waiting: dict) -> None:
        self.delegate = delegate
        self.busy = busy
        self.server_conn = server_conn
        self.waiting = waiting

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        self.busy.add(self.server_conn)
        self.waiting.pop(self.server_conn, None)
        return self.delegate.headers_received(start_line, headers)


async def run(settings: config.Settings, on_listening: Callable[[Gateway, int], None] | None = None) -> int:
    gateway = Gateway(settings)
    public_sockets = _bind(settings.port, settings.host, "public")
    internal_sockets = (
        _bind(settings.internal_port, settings.internal_host, "internal")
        if settings.internal_port else []
    )
    await gateway.start()
    _tune_collector()
    public = DrainableHTTPServer(
        gateway.public_router(),
        xheaders=False,  # forwarding.py applies TRUSTED_PROXIES instead
        idle_connection_timeout=IDLE_CONNECTION_TIMEOUT,
        max_body_size=max(settings.max_body_size, settings.media_max_body_size,
                          *(r.max_body_size for r in settings.routes)),
    )
    listener = PublicListener(public, gateway.realtime.upgrades, public.idle_timeout)
    await listener.start(public_sockets, LISTEN_BACKLOG)
    internal = None
    if internal_sockets:
        internal = HTTPServer(gateway.internal_app(), xheaders=False)
        internal.add_sockets(internal_sockets)
    log.info("listening on %s:%d (internal %s:%s), node %s", settings.host,
             public_sockets[0].getsockname()[1], settings.internal_host,
             internal_sockets[0].getsockname()[1] if internal_sockets else "off", gateway.node_id)
    if on_listening is not None:
        on_listening(gateway, public_sockets[0].getsockname()[1])

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    # A second signal during the drain ends the process at once.
    loop.add_signal_handler(signal.SIGTERM, lambda: sys.exit(1))

    log.info("draining (grace %gs, timeout %gs)", settings.drain_grace, settings.drain_timeout)
    deadline = loop.time() + settings.drain_timeout
    # Not ready at once, on every listener; the public one still accepts and serves for
    # the grace, so a load balancer checking /readyz takes the node out before it refuses.
    gateway.stopping = True
    grace = min(settings.drain_grace, settings.drain_timeout)
    if grace > 0:
        await asyncio.sleep(grace)
    listener.stop()  # no new connections; those without a whole head yet dropped
    public.start_drain()  # idle keep-alive ones closed
    await gateway.drain(max(deadline - loop.time(), 0))
    cut = await public.wait_drained(deadline - loop.time())
    if cut:
        log.warning("drain timeout: cut %d connection(s) still busy", cut)
    if internal is not None:
        internal.stop()
        await internal.close_all_connections()
    await gateway.close()
    log.info("drained; exiting")
    return 0
