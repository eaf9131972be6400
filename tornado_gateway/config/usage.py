"""``python -m tornado_gateway --help`` and ``--version``: every option, grouped by area, with its variables."""

from __future__ import annotations

import textwrap

from tornado_gateway import __version__
from tornado_gateway.config.options import SECRET_OPTIONS, by_area

PROG = "python -m tornado_gateway"
WIDTH = 100
INDENT = 29

COMMAND_LINE = (
    ("--devstack", "the gateway plus stand-ins of the six services on this machine, for development "
                   "(refused with NODE_ENV=production)"),
    ("--config PATH", "config file (tornado.options syntax: name = value lines; conf/gateway.conf.example)"),
    ("--env-file PATH", "dotenv file loaded into the environment (the real environment wins)"),
    ("--help, -h", "this help"),
    ("--version", "the version, then exit"),
)


def version() -> str:
    return f"tornado_gateway {__version__}"


def _entry(head: str, lines: list[str]) -> list[str]:
    out = []
    first = f"  {head}"
    body = [wrapped for line in lines
            for wrapped in textwrap.wrap(line, WIDTH - INDENT) or [""]]
    if len(first) < INDENT - 1:
        out.append(first.ljust(INDENT) + body[0])
        body = body[1:]
    else:
        out.append(first)
    out.extend(" " * INDENT + line for line in body)
    return out


def _default(name: str, value: object) -> str:
    if name in SECRET_OPTIONS or value == "":
        return "empty" if value == "" else "(set)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render() -> str:
    out = [
        f"usage: {PROG} [--devstack] [--config PATH] [--env-file PATH] [--OPTION=VALUE ...]",
        "",
        f"{version()}: the public entry point of the chat application (HTTP proxy, JWT, Socket.IO).",
        "Every option is also an environment variable (named below, aliases after it) and a",
        "config-file name (the option with '_'). Precedence: flags, environment, config file, defaults.",
        "Durations are in seconds, sizes in bytes. docs/configuration.md explains each option.",
        "",
        "Command line:",
    ]
    for head, text in COMMAND_LINE:
        out += _entry(head, [text])
    for area, rows in by_area():
        out += ["", f"{area}:"]
        for name, envs, _kind, default, help_text in rows:
            variables = envs[0] + (f" (alias {', '.join(envs[1:])})" if envs[1:] else "")
            out += _entry(f"--{name.replace('_', '-')}=VALUE",
                          [f"{variables}; default: {_default(name, default)}", help_text])
    return "\n".join(out) + "\n"
