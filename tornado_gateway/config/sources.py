"""Where settings come from: flags, environment, dotenv file, config file (in that precedence)."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Mapping, Sequence

from tornado.options import OptionParser

from tornado_gateway import tornado_compat
from tornado_gateway.config.options import _OPTIONS, SECRET_OPTIONS, ConfigError
from tornado_gateway.config.settings import Settings, build_settings


def make_parser() -> OptionParser:
    """The option parser behind ``--help``, flags and config files."""
    parser = OptionParser()
    parser.define("config", type=str, default="", help="config file (tornado.options syntax)")
    parser.define("env_file", type=str, default="", help="dotenv file loaded into the environment")
    for name, envs, kind, default, help_text in _OPTIONS:
        parser.define(name, type=kind, default=default, help=f"{help_text} [env {envs[0]}]")
    return parser


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read flags, environment and config file into validated Settings.

    Raises one ConfigError naming every problem found, not only the first.
    """
    problems: list[str] = []
    values = raw_values(argv, environ, problems=problems)
    return validated(values, problems)


def validated(values: Mapping[str, Any], problems: list[str]) -> Settings:
    """``build_settings(values)``, its problems reported together with ``problems`` (from the sources)."""
    try:
        settings = build_settings(values)
    except ConfigError as exc:
        raise ConfigError(*problems, *exc.problems) from None
    if problems:
        raise ConfigError(*problems)
    return settings


def raw_values(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
               defaults: Mapping[str, object] | None = None,
               problems: list[str] | None = None) -> dict[str, Any]:
    """Flags, environment and config file over ``defaults`` (option name -> value), unvalidated.

    A value that cannot be read is a problem: appended to ``problems`` (the
    option keeps its earlier value) or, without that list, raised at the end.
    """
    found: list[str] = [] if problems is None else problems
    argv = list(sys.argv if argv is None else argv)
    environ = dict(os.environ if environ is None else environ)
    parser = make_parser()
    for name, value in (defaults or {}).items():  # lowest precedence: below the config file
        option = tornado_compat.option_named(parser, name.replace("_", "-"))
        if option is None:
            raise KeyError(f"no option {name!r}")
        option.set(value)
    flags = parse_flags(argv, parser, found)
    env_file = flags.pop("env_file", "")
    config_file = flags.pop("config", "")
    if env_file:
        # The real environment wins over the file, as with docker's --env-file.
        environ = {**(_collect(found, _read_env_file, env_file) or {}), **environ}
    if config_file:
        _collect(found, _apply_config_file, parser, config_file, found)
    _apply_environment(parser, environ, found)
    for name, raw in flags.items():
        _collect(found, _set_raw, parser, name, raw, f"--{name.replace('_', '-')}")
    if problems is None and found:
        raise ConfigError(*found)
    return parser.as_dict()


def _collect(problems: list[str], fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or None with its ConfigError's problems added to ``problems``."""
    try:
        return fn(*args)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def parse_flags(argv: Sequence[str], parser: OptionParser, problems: list[str] | None = None) -> dict[str, str]:
    """``--name value``, ``--name=value`` (``_`` or ``-`` in names) into {option: raw value}.

    Anything else on the command line (unknown options, positional words,
    single-dash options) is refused rather than silently ignored: appended to
    ``problems``, or raised (all of them) without that list.
    """
    found: list[str] = [] if problems is None else problems
    flags: dict[str, str] = {}
    args = iter(argv[1:])
    for arg in args:
        if not arg.startswith("--") or arg == "--":
            found.append(f"command line: unexpected argument {_shown_arg(arg)} (options look like --name=value)")
            break  # what follows a stray word cannot be read reliably (a value of `-p`?)
        name, eq, value = arg[2:].partition("=")
        dashed = name.replace("_", "-")
        option = tornado_compat.option_named(parser, dashed)
        if option is None or dashed == "help":
            found.append(f"command line: unknown option --{dashed}")
            continue
        if not eq:
            if option.type is bool:
                value = "true"
            else:
                following = next(args, None)
                if following is None:
                    found.append(f"command line: --{dashed} needs a value")
                    continue
                value = following
        flags[dashed.replace("-", "_")] = value
    if problems is None and found:
        raise ConfigError(*found)
    return flags


def _shown_arg(arg: str) -> str:
    return repr(arg) if len(arg) <= 40 else repr(arg[:20] + "...")


def _parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


_PARSERS: dict[type, Callable[[str], Any]] = {bool: _parse_bool, int: int, float: float, str: str}
_EXPECTED = {int: "expected an integer", float: "expected a number", bool: "expected true or false"}


def _set_raw(parser: OptionParser, name: str, raw: str, source: str) -> None:
    """Parse ``raw`` as option ``name`` wants; errors name ``source``, never a secret."""
    option: Any = tornado_compat.option_named(parser, name.replace("_", "-"))
    try:
        value = _PARSERS[option.type](raw.strip() if option.type is not str else raw)
    except ValueError:
        raise ConfigError(f"{source}={_shown(name, raw)}: {_EXPECTED[option.type]}") from None
    option.set(value)


def _read_env_file(path: str) -> dict[str, str]:
    from dotenv import dotenv_values

    if not os.path.isfile(path):
        raise ConfigError(f"--env-file: no such file: {path}")
    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--env-file {path}: cannot read: {type(exc).__name__}") from None
    return {k: v for k, v in values.items() if v is not None}


def _apply_config_file(parser: OptionParser, path: str, problems: list[str]) -> None:
    """Run the file (tornado.options syntax: ``name = value`` Python lines) and take its names.

    Errors name the setting or the line, never a value: a config file holds secrets.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"--config: no such file: {path}")
    namespace: dict[str, object] = {"__file__": os.path.abspath(path)}
    try:
        with open(path, "rb") as f:
            exec(compile(f.read(), path, "exec"), namespace)  # noqa: S102 - operator's own file
    except SyntaxError as exc:
        raise ConfigError(f"--config {path}: syntax error at line {exc.lineno}") from None
    except Exception as exc:  # runtime error in the operator's file
        line = _error_line(exc, path)
        raise ConfigError(f"--config {path}: {type(exc).__name__} at line {line}") from None
    for key, value in namespace.items():
        if key.startswith("_") or callable(value) or type(value).__name__ == "module":
            continue
        name = key.lower().replace("-", "_")
        option = tornado_compat.option_named(parser, name.replace("_", "-"))
        if option is None or name in ("config", "env_file", "help"):
            problems.append(f"--config {path}: unknown setting {key!r}")
            continue
        if option.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, option.type):
            problems.append(f"--config {path}: setting {key!r} must be {option.type.__name__}, "
                            f"not {type(value).__name__}")
            continue
        option.set(value)


def _error_line(exc: BaseException, path: str) -> object:
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    return frames[-1].lineno if frames else "?"


def _apply_environment(parser: OptionParser, environ: Mapping[str, str], problems: list[str]) -> None:
    for name, envs, _kind, _default, _help in _OPTIONS:
        for env in reversed(envs):  # the canonical name is applied last and wins over aliases
            if env in environ:
                _collect(problems, _set_raw, parser, name, environ[env], env)


def _shown(name: str, raw: str) -> str:
    return "<redacted>" if name in SECRET_OPTIONS else repr(raw)

