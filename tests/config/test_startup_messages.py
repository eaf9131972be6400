"""Start-up in the gateway's own words: every config problem at once, secret warnings, --help by area, --version."""

from __future__ import annotations

import re

from harness import run_gateway_cli
from tornado_gateway import __version__
from tornado_gateway.config.options import _OPTIONS, AREAS


def error_lines(result) -> list[str]:
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("tornado_gateway: configuration error: ") for line in lines), lines
    return lines


def test_every_configuration_problem_is_reported_in_one_run():
    secret = "not-a-number-secret-value"
    result = run_gateway_cli(["--port=abc", "--no-such-option=1"],
                             env={"LOG_LEVEL": "loud", "RATE_LIMIT_USER": "lots", "AUTH_SERVICE_URL": "ftp://a",
                                  "CHATS_SERVICE_URL": "nope", "REDIS_PORT": "70000",
                                  "INTERNAL_AUTH_PASSWORD": secret, "JWT_LEEWAY": "-1"})
    assert result.returncode == 2 and result.stdout == ""
    lines = error_lines(result)
    for word in ("--no-such-option", "--port", "LOG_LEVEL", "RATE_LIMIT_USER", "AUTH_SERVICE_URL",
                 "CHATS_SERVICE_URL", "REDIS_PORT", "JWT_LEEWAY"):
        assert sum(word in line for line in lines) == 1, (word, lines)
    assert len(lines) == 8
    assert secret not in result.stderr


def test_production_names_every_weak_setting_at_once():
    result = run_gateway_cli([], env={"NODE_ENV": "production", "JWT_ACCESS_SECRET": "changeme",
                                      "ALLOWED_ORIGINS": "*", "PORT": "x"})
    assert result.returncode == 2
    text = "\n".join(error_lines(result))
    for word in ("PORT", "JWT_ACCESS_SECRET is an example value", "JWT_REFRESH_SECRET is missing",
                 "ALLOWED_ORIGINS", "INTERNAL_AUTH_USER"):
        assert word in text, word
    assert "changeme" not in result.stderr


def _warnings(gateway) -> list[str]:
    return [r["message"] for r in gateway.log_records() if r.get("level") == "warning"]


def test_missing_and_example_secrets_are_warned_about_in_development(start_gateway):
    gateway = start_gateway({"JWT_ACCESS_SECRET": None, "JWT_REFRESH_SECRET": "your-refresh-secret"})
    assert gateway.get_json("/healthz")[0] == 200
    warnings = _warnings(gateway)
    assert any(w.startswith("JWT_ACCESS_SECRET is not set: every access token will be refused")
               for w in warnings), warnings
    assert any(w.startswith("JWT_REFRESH_SECRET is an example value") and "NODE_ENV=production" in w
               for w in warnings), warnings
    assert "your-refresh-secret" not in gateway.logs()


def test_good_secrets_give_no_secret_warning(start_gateway):
    gateway = start_gateway()
    assert gateway.get_json("/healthz")[0] == 200
    assert any(r.get("message", "").startswith("listening on") for r in gateway.log_records())  # marker
    assert not [w for w in _warnings(gateway) if "JWT_" in w]


def test_help_groups_every_option_by_area_with_its_variables_and_aliases():
    for args in (["--help"], ["--devstack", "-h"]):
        result = run_gateway_cli(args)
        assert result.returncode == 0 and result.stderr == ""
        text = result.stdout
        assert text.startswith("usage: python -m tornado_gateway ")
        positions = [text.index(f"\n{area}:\n") for area, _ in AREAS]
        assert positions == sorted(positions)
        sections = dict(zip([a for a, _ in AREAS], re.split(r"\n(?:" + "|".join(
            re.escape(a) for a, _ in AREAS) + r"):\n", text)[1:]))
        for area, names in AREAS:
            for name in names:
                assert f"--{name.replace('_', '-')}=VALUE" in sections[area], (area, name)
        for name, envs, *_ in _OPTIONS:
            entry = text.split(f"--{name.replace('_', '-')}=VALUE", 1)[1].split("\n  --", 1)[0]
            first = entry.strip().split("\n", 1)[0]  # the variables' line (below a long option name)
            assert first.startswith(envs[0] + " ") or first.startswith(envs[0] + ";"), (name, first)
            for alias in envs[1:]:
                assert f"(alias {alias}" in first, alias
        assert "--devstack" in text and "--version" in text


def test_version():
    result = run_gateway_cli(["--version"])
    assert result.returncode == 0 and result.stdout == f"tornado_gateway {__version__}\n"
