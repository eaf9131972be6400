"""The upstream's response head: one precompiled expression per line, as strict as Tornado."""

from __future__ import annotations

import re

from tornado import httputil


# One header field line (RFC 9110 §5.5, RFC 9112 §5): a token, ":", optional whitespace, then
# a value that is empty or starts and ends with a visible (or obs-text) character; no
# controls, no bare CR, no line folding. What Tornado's HTTPHeaders.parse accepts, in one match.
FIELD_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
                        r"((?:[\x21-\x7e\x80-\xff](?:[\x21-\x7e\x80-\xff \t]*[\x21-\x7e\x80-\xff])?)?)"
                        r"[ \t]*")


def parse_response_head(data: bytes) -> tuple[str, httputil.HTTPHeaders]:
    """The start line and headers of a response head (``HTTP1Connection._parse_headers``).

    Raises ``HTTPInputError`` for any line Tornado's parser would refuse.
    """
    text = data.decode("latin1").lstrip("\r\n")
    lines = text.split("\n")
    headers = httputil.HTTPHeaders()
    for line in lines[1:]:
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            continue
        match = FIELD_LINE.fullmatch(line)
        if match is None:
            raise httputil.HTTPInputError(f"malformed response header line {line[:80]!r}")
        name, value = match.groups()
        if name in headers:
            headers.add(name, value)
        else:
            headers[name] = value
    return lines[0].rstrip("\r"), headers
