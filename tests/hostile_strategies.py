"""Hostile hypothesis strategies shared by the property tests (issue 7): text with lone
surrogates and odd separators, NaN/Infinity and huge numbers, deep nesting, ingress bodies,
path segments that play with dots, escapes and parameters."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from tornado_gateway.internal import ingress

SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ODD_CHAR = st.one_of(st.characters(), SURROGATE, st.sampled_from("\u2028\u2029\x00\x7f\ufeff\ufffd"))
HOSTILE_TEXT = st.text(alphabet=ODD_CHAR, max_size=40)
NUMBER = st.one_of(st.integers(), st.integers(min_value=10 ** 18, max_value=10 ** 400),
                   st.floats(allow_nan=True, allow_infinity=True))
LEAF = st.one_of(st.none(), st.booleans(), NUMBER, HOSTILE_TEXT, st.sampled_from(["c1", "m-1", "x" * 5000]))
VALUE = st.recursive(LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(HOSTILE_TEXT, st.sampled_from(
        ["chatId", "clientMessageId", "text", "memberIds", "messageIds", "emoji", "type", "name",
         "token", "event", "to", "data", "userId", "jti", "before", "exp", "chat", "user", "users"])),
        inner, max_size=5)), max_leaves=25)


def deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


DEEP_TEXT = st.integers(min_value=1, max_value=5000).map(deep)
RAW_JSON = st.one_of(
    VALUE.map(json.dumps),  # NaN, Infinity, huge ints, "\ud800" escapes: json.dumps writes them all
    DEEP_TEXT,
    st.sampled_from(['"\\ud800"', '"\\udfff"', '"\\ud83dx"', '"\\ud83d\\ude00"', "NaN", "-Infinity",
                     "1e999", "9" * 5000, '{"a":1} trailing', "\ufeff{}", "", "[", "{}}"]),
    HOSTILE_TEXT,
)

INGRESS_BODY = st.one_of(
    RAW_JSON,
    st.builds(lambda e, to, d: json.dumps({"event": e, "to": to, "data": d}),
              st.sampled_from(sorted(ingress.SERVER_EVENTS) + ["bogus", ""]),
              st.one_of(VALUE, st.fixed_dictionaries({"chat": VALUE}), st.fixed_dictionaries({"users": VALUE})),
              VALUE),
    st.builds(lambda d: '{"event":"message:edit","to":{"chat":"c1"},"data":{"x":%s}}' % d, RAW_JSON),
    st.builds(lambda u, j, b: json.dumps({"type": "session:revoke", "userId": u, "jti": j, "before": b}),
              VALUE, VALUE, NUMBER),
)

SEGMENT = st.one_of(
    st.sampled_from(["api", "auth", "users", "chats", "refresh", "REFRESH", "..", ".", "%2e", "%2E%2e",
                     ".%2e", "..;", "..;x", ".;", "%2f", "%5C", "%00", "%", "%zz", "%72efresh", "a;b",
                     "", "~", "caf%C3%A9", "\\", "é", "a b", "#", "?"]),
    st.text(alphabet="aZ09-._~!$&'()*+,;=:@%2eEfF/\\", max_size=8),
)
PATH = st.lists(SEGMENT, min_size=0, max_size=7).map(lambda parts: "/" + "/".join(parts))
