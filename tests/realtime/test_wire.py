"""Pins the python-socketio / python-engineio internals the realtime/wire package relies on: each
test fails when a release of either library changes the detail the package reaches for."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import socketio
from engineio import packet as eio_packet
from engineio.async_drivers.tornado import get_tornado_handler
from engineio.async_socket import AsyncSocket
from socketio.async_manager import AsyncManager
from socketio.async_pubsub_manager import AsyncPubSubManager

from tornado_gateway.realtime import wire


@pytest.mark.gen_test
async def test_ack_ids_come_from_generate_ack_id_and_leave_with_their_sid():
    # FastDelivery draws every ack id (python-socketio's callbacks and message:new's shared
    # one) from one node-wide counter by overriding _generate_ack_id, keeps them in
    # callbacks[sid], and answers acks in trigger_callback; python-socketio's disconnect drops
    # callbacks[sid] (wire.RoomIndex's basic_disconnect does the same).
    assert "self._generate_ack_id(sid, callback)" in inspect.getsource(AsyncManager.emit)
    assert "self.manager.trigger_callback(sid, id, data)" in inspect.getsource(
        socketio.AsyncServer._handle_ack)
    manager = socketio.AsyncServer(async_mode="tornado").manager
    sid = await manager.connect("eio-1", "/")
    manager.callbacks[sid] = {7: print}
    manager.basic_disconnect(sid, "/")
    assert sid not in manager.callbacks


def test_client_events_reach_handle_event_with_the_overridden_signature():
    params = list(inspect.signature(socketio.AsyncServer._handle_event).parameters)
    assert params == ["self", "eio_sid", "namespace", "id", "data"]
    assert "self._handle_event(" in inspect.getsource(socketio.AsyncServer._handle_eio_message)
    params = list(inspect.signature(socketio.AsyncServer._send_packet).parameters)
    assert params == ["self", "eio_sid", "pkt"]


@pytest.mark.gen_test
async def test_gateway_server_hands_connected_events_to_on_event():
    received: list = []
    sio = wire.GatewaySocketServer(lambda *args: received.append(args), async_mode="tornado")
    await sio._handle_event("eio-unknown", "/", 3, ["x", {}])  # no such socket: dropped
    assert received == []
    sid = await sio.manager.connect("eio-1", "/")
    await sio._handle_event("eio-1", None, 3, ["x", {"a": 1}])
    assert received == [(sid, "eio-1", ["x", {"a": 1}], 3)]


@pytest.mark.gen_test
async def test_engineio_socket_queue_is_what_poll_sends():
    eio = socketio.AsyncServer(async_mode="tornado").eio
    sock = AsyncSocket(eio, "eio-1")
    assert (sock.upgraded, sock.closed, sock.closing) == (False, False, False)
    pkt = eio_packet.Packet(eio_packet.MESSAGE, '2["e",1]')
    sock.queue.put_nowait(pkt)
    assert await sock.poll() == [pkt]
    assert "self.queue.put(" in inspect.getsource(AsyncSocket.send)  # write_directly replaces send


def test_tornado_handler_queues_incoming_messages_in_receive_queue():
    handler = get_tornado_handler(socketio.AsyncServer(async_mode="tornado").eio)
    source = inspect.getsource(handler)
    assert "self.receive_queue = asyncio.Queue()" in source
    assert "await self.receive_queue.put(message)" in source  # on_message, replaced by ours


class _Recording(wire.RedisManagerBase):
    def __init__(self) -> None:
        super().__init__("redis://127.0.0.1:1/0", channel="pin")
        self.listened = asyncio.Event()
        self.published: list = []

    async def listen(self) -> None:
        self.listened.set()
        await asyncio.sleep(3600)

    async def publish_control(self, data: dict) -> None:
        self.published.append(data)


@pytest.mark.gen_test
async def test_pubsub_hooks_thread_and_publish_reach_listen_and_publish_control():
    manager = _Recording()
    sio = socketio.AsyncServer(client_manager=manager, async_mode="tornado")
    assert sio.manager_initialized is False
    wire.initialize_manager(sio)
    assert sio.manager_initialized is True
    await asyncio.wait_for(manager.listened.wait(), 2)  # initialize() ran _thread as a task
    assert manager.listener_task() is not None
    await manager.close_room("r1", "/")
    assert manager.published and manager.published[0]["method"] == "close_room"
    manager.listener_task().cancel()
    for name in ("disconnect", "enter_room", "leave_room", "close_room"):
        assert name in wire.CONTROL_METHODS
        assert inspect.iscoroutinefunction(getattr(AsyncPubSubManager, f"_handle_{name}"))


def test_frames_are_rfc6455_unmasked_final_frames():
    assert wire._frame(b"hi") == b"\x81\x02hi"
    assert wire._frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert wire._frame(b"x" * 70000, opcode=0x2)[:2] == b"\x82\x7f"


def test_packets_are_decoded_by_the_servers_packet_class_and_its_json():
    # wire.StrictPacket: the server decodes every Socket.IO packet with self.packet_class, whose
    # class attribute ``json`` does the JSON; Engine.IO's own packets keep engineio's json.
    assert "self.packet_class(encoded_packet=data)" in inspect.getsource(
        socketio.AsyncServer._handle_eio_message)
    assert "self.json.loads(" in inspect.getsource(socketio.packet.Packet.decode)
    server = wire.GatewaySocketServer(lambda *args: None, async_mode="asgi")
    assert server.packet_class is wire.StrictPacket
    deep = "[" * 5000 + "]" * 5000
    packet = wire.StrictPacket(encoded_packet='27["message:send",' + deep + "]")
    assert packet.id == 7 and packet.data[0] == "message:send"
    assert "nested deeper" in packet.data[1].reason
    assert eio_packet.Packet.json is not wire.SocketJSON  # "2probe" must still fail to decode


@pytest.mark.gen_test
async def test_translate_request_is_engineios_without_a_class_per_request():
    """handle_request reads the driver table's translate_request; the gateway's gives the same environ."""
    from engineio.async_drivers import tornado as eio_tornado
    from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

    from tornado_gateway.realtime.wire.server import translate_request

    assert "self._async['translate_request']" in inspect.getsource(
        socketio.AsyncServer(async_mode="tornado").eio.handle_request)
    sio = wire.GatewaySocketServer(lambda *args: None, async_mode="tornado")
    assert sio.eio._async["translate_request"] is translate_request
    assert eio_tornado._async["translate_request"] is eio_tornado.translate_request  # not changed for others
    headers = HTTPHeaders({"Host": "gw.example", "Origin": "https://app.example", "Content-Type": "text/plain",
                           "Content-Length": "5", "X-Forwarded-Proto": "https", "Sec-WebSocket-Key": "k"})
    request = HTTPServerRequest(start_line=RequestStartLine("POST", "/socket.io/?EIO=4&transport=polling",
                                                            "HTTP/1.1"), headers=headers, body=b"hello")

    class Handler:
        pass

    handler = Handler()
    handler.request = request  # type: ignore[attr-defined]
    ours, theirs = translate_request(handler), eio_tornado.translate_request(handler)
    assert await ours.pop("wsgi.input").read() == await theirs.pop("wsgi.input").read() == b"hello"
    assert ours == theirs


def test_a_checked_websocket_opens_as_handle_request_opens_one():
    """open_checked_websocket skips handle_request's reading of the query (DirectUpgrade
    checked it): what is left of handle_request for a websocket connect is _handle_connect
    with the transport, and _make_response for a dict answer."""
    from engineio.async_server import AsyncServer as EngineServer

    handle = inspect.getsource(EngineServer.handle_request)
    assert "r = await self._handle_connect(environ, transport," in handle
    assert "if not isinstance(r, dict):\n            return r" in handle
    assert "return await self._make_response(r, environ)" in handle
    assert list(inspect.signature(EngineServer._handle_connect).parameters)[:3] == ["self", "environ", "transport"]
    ours = inspect.getsource(wire.GatewaySocketServer.open_checked_websocket)
    assert "self.eio._handle_connect(environ, \"websocket\")" in ours and "self.eio._make_response(reply, environ)" in ours


def test_engineio_deletes_a_closed_socket_only_where_it_is_still_in_its_table():
    # LeanSocket.close takes its own entry out of server.sockets at once; engineio's own
    # deletions (after a websocket ends, in disconnect) must stay guarded, or they would raise.
    from engineio.async_server import AsyncServer as EngineServer

    assert "if s.closed and sid in self.sockets:" in inspect.getsource(EngineServer._handle_connect)
    assert "if sid in self.sockets:" in inspect.getsource(EngineServer.disconnect)
    sweep = inspect.getsource(EngineServer._service_task)  # its sweep tolerates a socket gone
    assert "del self.sockets[s.sid]" in sweep and "except KeyError:" in sweep


@pytest.mark.gen_test
async def test_a_closed_lean_socket_leaves_the_table_and_engineio_disconnects_still_work(monkeypatch):
    # LeanSocket.close takes its own entry out of engineio's table once its websocket ran;
    # disconnecting that sid or every socket afterwards must not raise (the guards above).
    class Writer:
        def flush_one(self, handler):
            pass

        def send_text(self, handler, payload, opcode=1):
            pass

    class Handler:
        closed = False

        def close(self):
            self.closed = True

    monkeypatch.setattr(wire.LeanSocket, "writer", Writer())
    pinger = wire.Pinger(25)
    monkeypatch.setattr(wire.LeanSocket, "pinger", pinger)
    eio = socketio.AsyncServer(async_mode="tornado").eio
    sockets = []
    for n in range(3):
        sock = AsyncSocket(eio, f"eio-{n}")
        eio.sockets[sock.sid] = sock
        assert wire.adopt(sock)
        sock.handler = Handler()
        pinger.add(sock)
        sockets.append(sock)
    await sockets[0].close(wait=False, abort=True)
    assert "eio-0" not in eio.sockets and sockets[0] not in set().union(*pinger.slots)
    assert sockets[0].handler.closed
    await eio.disconnect("eio-0")  # already gone: nothing to do
    await eio.disconnect()  # the rest, while their closes take their entries out
    assert eio.sockets == {} and not any(pinger.slots) and all(s.closed for s in sockets)
    pinger.stop()
