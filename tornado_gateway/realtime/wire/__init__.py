"""The only home of python-engineio / python-socketio internals, re-exported here as ``wire.X``.

Why each internal is used: docs/architecture.md; pinned by tests/realtime/test_wire.py.
"""

from tornado_gateway.codec import SocketJSON
from tornado_gateway.codec import dumps as _dumps
from tornado_gateway.realtime.wire.delivery import ACK_WINDOW, ACKED_EVENT, FastDelivery, _frame, _write_frames
from tornado_gateway.realtime.wire.direct import DirectSocket, DirectUpgrade
from tornado_gateway.realtime.wire.handler import make_socket_handler
from tornado_gateway.realtime.wire.lean import (ENGINEIO_TYPES, LeanSocket, Pinger, _spawn, adopt, configure,
                                                protocol_error)
from tornado_gateway.realtime.wire.managers import CONTROL_METHODS, RedisManagerBase, RoomHooks, RoomIndex
from tornado_gateway.realtime.wire.server import (GatewaySocketServer, StrictPacket, eio_socket, initialize_manager,
                                                  send_ack_packet, slim_environ, write_directly)

__all__ = [
    "ACKED_EVENT", "ACK_WINDOW", "CONTROL_METHODS", "DirectSocket", "DirectUpgrade", "ENGINEIO_TYPES", "FastDelivery", "GatewaySocketServer",
    "LeanSocket", "Pinger", "RedisManagerBase", "RoomHooks", "RoomIndex", "SocketJSON", "StrictPacket", "_dumps",
    "_frame",
    "_spawn", "_write_frames", "adopt", "configure", "eio_socket", "initialize_manager", "make_socket_handler",
    "protocol_error", "send_ack_packet", "slim_environ", "write_directly",
]
