"""Payload validation: stdlib json + hand checks vs orjson + hand checks vs msgspec Structs.

Two questions, answered for the socket payloads (a ``message:send`` packet's
data) and the ingress bodies (``POST /internal/events`` / ``gateway:events``):

1. behaviour on hostile inputs (issue 7): lone surrogates, NaN/Infinity, deep
   nesting, huge numbers, a 200,000-character text, trailing data;
2. CPU per event on a typical payload (median of several rounds, one core).

Run: ``.venv/bin/pip install msgspec`` (only the bench needs it), then
``.venv/bin/python bench/validation_bench.py`` (prints three tables; the
figures are recorded in docs/validation.md).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Annotated, Any, Callable

import msgspec
import orjson

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from tornado_gateway import codec  # noqa: E402
from tornado_gateway.internal import ingress  # noqa: E402
from tornado_gateway.realtime.payloads import EventError, check_message_send  # noqa: E402

# -- candidates -----------------------------------------------------------------------

Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class MessageSend(msgspec.Struct):
    chatId: Id
    clientMessageId: Id
    text: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    mediaId: Id | None = None
    replyToId: Id | None = None


class ToChat(msgspec.Struct, forbid_unknown_fields=True):
    chat: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class Emit(msgspec.Struct, forbid_unknown_fields=True):
    event: str
    to: ToChat
    data: dict[str, Any]


_packet = msgspec.json.Decoder(tuple[str, msgspec.Raw])
_send = msgspec.json.Decoder(MessageSend)
_emit = msgspec.json.Decoder(Emit)


def socket_stdlib(raw: str) -> Any:
    """Before issue 7: json.loads, then the hand-written checks."""
    event, payload = json.loads(raw)
    return check_message_send(payload)


def socket_orjson(raw: str) -> Any:
    """Now: codec.loads (orjson, depth bound), then the same hand-written checks."""
    event, payload = codec.loads(raw)
    return check_message_send(payload)


def socket_msgspec(raw: str) -> Any:
    """msgspec: the packet as (event, Raw), then the event's Struct."""
    event, payload = _packet.decode(raw)
    return _send.decode(payload)


def ingress_stdlib(raw: bytes) -> Any:
    message = json.loads(raw)
    return ingress._parse_emit(message)


def ingress_orjson(raw: bytes) -> Any:
    return ingress.parse_event(raw, 1 << 20)


def ingress_msgspec(raw: bytes) -> Any:
    return _emit.decode(raw)


SOCKET = {"stdlib json + hand checks": socket_stdlib, "orjson + hand checks (adopted)": socket_orjson,
          "msgspec Structs": socket_msgspec}
INGRESS = {"stdlib json + hand checks": ingress_stdlib, "orjson + hand checks (adopted)": ingress_orjson,
           "msgspec Structs": ingress_msgspec}

# -- inputs -----------------------------------------------------------------------------

TYPICAL_SEND = json.dumps(["message:send", {"chatId": "chat-42", "clientMessageId": "c-0001",
                                            "text": "See you at the station at 6, bring the tickets!"}])
TYPICAL_EMIT = json.dumps({"event": "message:new", "to": {"chat": "chat-42"}, "data": {"message": {
    "id": "m-9001", "chatId": "chat-42", "senderId": "u-7", "text": "See you at the station at 6",
    "createdAt": "2026-12-04T15:00:00.000Z", "reactions": {"u-8": "+1"}}}}).encode()


def send_with(value: str) -> str:
    return '["message:send",{"chatId":"c1","clientMessageId":"m1","text":%s}]' % value


def emit_with(value: str) -> bytes:
    return ('{"event":"message:edit","to":{"chat":"c1"},"data":{"x":%s}}' % value).encode()


HOSTILE = {
    "lone surrogate \\ud800": ('"a\\ud800"', '"a\\ud800"'),
    "NaN": ("NaN", "NaN"),
    "Infinity": ("Infinity", "Infinity"),
    "1e999": ("1e999", "1e999"),
    "5000-digit integer": ("9" * 5000, "9" * 5000),
    "nested 10,000 deep": ("[" * 10000 + "]" * 10000, "[" * 10000 + "]" * 10000),
    "nested 70 deep": ("[" * 70 + "]" * 70, "[" * 70 + "]" * 70),
    "200,000-char text": ('"' + "x" * 200000 + '"', '"' + "x" * 200000 + '"'),
}


def outcome(fn: Callable, raw) -> str:
    try:
        fn(raw)
    except RecursionError:
        return "RecursionError (crash)"
    except (ValueError, EventError, msgspec.ValidationError, msgspec.DecodeError,
            orjson.JSONDecodeError) as exc:
        if isinstance(exc, ValueError) and "Exceeds the limit" in str(exc):
            return "refused (int limit)"
        return "refused"
    except Exception as exc:  # noqa: BLE001 - the bench reports whatever happens
        return f"{type(exc).__name__}"
    return "ACCEPTED"


def per_event_us(fn: Callable, raw, rounds: int = 7, count: int = 20000) -> float:
    results = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(count):
            fn(raw)
        results.append((time.process_time() - started) / count * 1e6)
    return statistics.median(results)


def main() -> None:
    print("## hostile inputs (socket message:send text / ingress data.x)\n")
    names = list(SOCKET)
    print("| input | " + " | ".join(f"socket: {n}" for n in names) + " | "
          + " | ".join(f"ingress: {n}" for n in names) + " |")
    print("|---" * (1 + 2 * len(names)) + "|")
    for label, (socket_value, ingress_value) in HOSTILE.items():
        cells = [outcome(fn, send_with(socket_value)) for fn in SOCKET.values()]
        cells += [outcome(fn, emit_with(ingress_value)) for fn in INGRESS.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n## CPU per event (µs, median of 7 rounds of 20,000; time.process_time)\n")
    print("| candidate | socket message:send (%d B) | ingress message:new (%d B) |"
          % (len(TYPICAL_SEND), len(TYPICAL_EMIT)))
    print("|---|---|---|")
    for name in names:
        print(f"| {name} | {per_event_us(SOCKET[name], TYPICAL_SEND):.2f} | "
              f"{per_event_us(INGRESS[name], TYPICAL_EMIT):.2f} |")
    data = ["message:new", json.loads(TYPICAL_EMIT)["data"]]
    encoders = {"stdlib json.dumps + encode": lambda v: json.dumps(v, separators=(",", ":"),
                                                                    ensure_ascii=False).encode(),
                "codec.dumps_bytes (orjson, adopted)": codec.dumps_bytes,
                "msgspec.json.encode": msgspec.json.encode}
    print("\n## outbound encode of one fan-out (message:new event, µs)\n")
    print("| encoder | µs |")
    print("|---|---|")
    for name, fn in encoders.items():
        print(f"| {name} | {per_event_us(fn, data):.2f} |")
    print(f"\nPython {sys.version.split()[0]}, orjson {orjson.__version__}, msgspec {msgspec.__version__}")


if __name__ == "__main__":
    main()
