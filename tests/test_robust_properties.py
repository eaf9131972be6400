"""Property-based tests (hypothesis) over every entry point's validator (issue 7).

Hostile generators (lone surrogates, NaN/Infinity, huge numbers, deep nesting,
odd path and header spellings) are thrown at the code each entry runs: the
socket packet decoder plus the event payload checks, the ingress body parser,
the path normaliser and classifier, the token's user-id rule, the bearer and
identity-header rules. The property everywhere: the only exception is the
documented refusal, and what is accepted is clean (valid Unicode, bounded
depth, encodable). Bounded (max_examples) so the module runs in seconds.
"""

from __future__ import annotations

import json
import re

import jwt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import ACCESS_SECRET
from hostile_strategies import HOSTILE_TEXT, INGRESS_BODY, NUMBER, ODD_CHAR, PATH, RAW_JSON, VALUE
from tornado_gateway import codec
from tornado_gateway.internal import ingress
from tornado_gateway.realtime import payloads
from tornado_gateway.edge.identity import AuthError, TokenVerifier, bearer_token
from tornado_gateway.config import Route, Settings
from tornado_gateway.edge.paths import PathError, check_query, class_key, resolve
from tornado_gateway.proxy.headers import is_dropped_spelling, is_identity_header

BOUNDED = settings(max_examples=150, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow])

def all_strings_valid(value) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and not codec.valid_unicode(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


ID_FIELDS = ("chatId", "clientMessageId", "mediaId", "replyToId", "messageId", "memberIds", "messageIds")


def ids_clean(clean) -> bool:
    """Every id the checks let through is 1-64 of A-Z a-z 0-9 _ - and nothing else (not even a final newline)."""
    if not isinstance(clean, dict):
        return True
    for name in ID_FIELDS:
        values = clean.get(name)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value) is None:
                return False
    return True


# -- the one decoder --------------------------------------------------------------------

@BOUNDED
@given(RAW_JSON)
def test_codec_loads_accepts_clean_json_or_refuses(raw):
    try:
        value = codec.loads(raw)
    except codec.JSONRefused as exc:
        assert str(exc)
        return
    assert all_strings_valid(value)
    assert not codec.too_deep(value, None, codec.MAX_DEPTH)
    assert codec.loads(codec.dumps_bytes(value)) == value  # what is accepted can be sent on


@BOUNDED
@given(VALUE)
def test_codec_dumps_never_fails_on_text_and_always_writes_json(value):
    try:
        out = codec.dumps_bytes(value)
    except ValueError:
        return  # NaN together with something orjson declines: the documented last resort
    json.loads(out)  # parseable by a strict-ish reader
    assert b"NaN" not in out.replace(b'"', b"") or b"NaN" in json.dumps(value).encode()


# -- socket packets and event payloads ---------------------------------------------------

CHECKS = [payloads.check_chat_id, payloads.check_chat_create, payloads.check_message_send,
          payloads.check_message_read, payloads.check_reaction_set, payloads.check_auth_hello]


@BOUNDED
@given(st.sampled_from(["message:send", "chat:join", "chat:create", "reaction:set", "x" * 80]),
       RAW_JSON, st.sampled_from(CHECKS))
def test_socket_packet_then_payload_check_refuses_only_with_validation_failed(event, raw, check):
    data = codec.SocketJSON.loads(f'["{event}",{raw}]')  # never raises
    assert isinstance(data, list)
    payload = data[1] if len(data) > 1 else None
    try:
        clean = check(payload)
    except payloads.EventError as exc:
        assert exc.code == "VALIDATION_FAILED" and exc.message
        return
    assert all_strings_valid(clean)
    codec.dumps_bytes(clean)
    assert ids_clean(clean)


@BOUNDED
@given(VALUE, st.sampled_from(CHECKS))
def test_payload_checks_on_any_decoded_value_refuse_only_with_validation_failed(value, check):
    try:
        clean = check(value)
    except payloads.EventError as exc:
        assert exc.code == "VALIDATION_FAILED"
        return
    assert ids_clean(clean)


@BOUNDED
@given(st.sampled_from(["c1\n", "c1\r", "\nc1", "c1\x00", "c 1", "c1\u2028"]),
       st.sampled_from([payloads.check_chat_id, payloads.check_message_send, payloads.check_message_read,
                        payloads.check_reaction_set]))
def test_ids_with_a_newline_or_space_are_refused(chat_id, check):
    payload = {"chatId": chat_id, "clientMessageId": "m1", "text": "t", "type": "direct",
               "memberIds": ["u2"], "messageIds": ["m1"], "messageId": "m1", "emoji": None}
    try:
        check(payload)
    except payloads.EventError as exc:
        assert exc.code == "VALIDATION_FAILED"
        return
    raise AssertionError(f"{chat_id!r} accepted by {check.__name__}")


@BOUNDED
@given(st.one_of(st.none(), HOSTILE_TEXT, st.text(alphabet="abc-_,; 1\u00e9", max_size=400)))
def test_presence_user_ids_query(raw):
    try:
        ids = payloads.check_user_ids(raw)
    except payloads.EventError as exc:
        assert exc.code == "VALIDATION_FAILED"
        return
    assert ids and all(payloads.ID_RE.match(i) for i in ids)


# -- event ingress ----------------------------------------------------------------------

@BOUNDED
@given(INGRESS_BODY, st.booleans())
def test_ingress_parse_event_accepts_clean_events_or_refuses(body, as_bytes):
    raw = body.encode("utf-8", "surrogatepass") if as_bytes else body
    try:
        message = ingress.parse_event(raw, 256 * 1024)
    except ingress.InvalidEvent as exc:
        assert str(exc)
        return
    assert all_strings_valid(message)
    assert not codec.too_deep(message, None, codec.MAX_DEPTH)
    codec.dumps_bytes(message)
    assert ingress.event_name(message) in ingress.SERVER_EVENTS | {ingress.REVOKE}


# -- paths ------------------------------------------------------------------------------

ROUTES = tuple(sorted((
    Route("/api/auth", "auth", "http://a:1", "", 1, 1, 1),
    Route("/api/users", "users", "http://u:2", "/users", 1, 1, 1),
    Route("/api/chats", "chats", "http://c:3", "", 1, 1, 1),
), key=lambda r: len(r.prefix), reverse=True))
@settings(max_examples=400, deadline=None, database=None)
@given(st.one_of(PATH, st.text(alphabet=ODD_CHAR, max_size=30)))
def test_path_normaliser_routes_inside_the_prefix_or_refuses(path):
    try:
        resolved = resolve(ROUTES, path)
    except PathError as exc:
        assert str(exc)
        return
    class_key(path)  # never raises
    if resolved is None:
        return
    route = resolved.route
    assert resolved.path == route.prefix or resolved.path.startswith(route.prefix + "/")
    assert resolved.upstream_path.startswith(route.upstream_path or "/")
    for segment in resolved.upstream_path.split("/"):
        head = segment.partition(";")[0].lower().replace("%2e", ".")
        assert head not in (".", ".."), resolved.upstream_path


@BOUNDED
@given(st.text(alphabet=ODD_CHAR, max_size=30))
def test_query_check_refuses_or_passes(query):
    try:
        check_query(query)
    except PathError:
        return
    assert all(0x21 <= ord(c) <= 0x7E and c != "#" for c in query)


# -- headers and identity ----------------------------------------------------------------

@BOUNDED
@given(st.lists(st.sampled_from(["x", "X", "user", "USER", "User", "id", "Id", "roles"]), min_size=2,
                max_size=3), st.lists(st.sampled_from(["-", "_"]), min_size=2, max_size=2))
def test_identity_headers_are_recognised_in_any_spelling(words, seps):
    if [w.lower() for w in words[:2]] != ["x", "user"]:
        return
    name = words[0] + seps[0] + words[1] + (seps[1] + words[2] if len(words) > 2 else "")
    assert is_identity_header(name.lower()) or is_dropped_spelling(name.lower())
    if "_" not in name:
        assert is_identity_header(name.lower())


@BOUNDED
@given(st.one_of(st.none(), HOSTILE_TEXT, st.builds(lambda s, t: f"{s} {t}",
                                                    st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", ""]),
                                                    HOSTILE_TEXT)))
def test_bearer_header_gives_a_token_or_none(header):
    token = bearer_token(header)
    assert token is None or (token and " " not in token.strip() or len(token) <= 8192)


VERIFIER = TokenVerifier(Settings(jwt_access_secret=ACCESS_SECRET, jwt_refresh_secret="r" * 40))


@BOUNDED
@given(st.one_of(HOSTILE_TEXT, NUMBER, st.none(), st.booleans(), st.lists(st.integers(), max_size=2)),
       st.sampled_from(["sub", "userId"]))
def test_token_user_id_is_visible_ascii_or_the_token_is_refused(user_id, claim):
    import time

    try:
        token = jwt.encode({claim: user_id, "exp": int(time.time()) + 600}, ACCESS_SECRET, algorithm="HS256")
    except (TypeError, ValueError, OverflowError):
        return  # not even encodable as a JWT by pyjwt
    try:
        identity = VERIFIER.verify_access(token)
    except AuthError as exc:
        assert exc.status == 401
        return
    assert 1 <= len(identity.user_id) <= 128
    assert all(0x21 <= ord(c) <= 0x7E for c in identity.user_id)
