"""The README is a front door and docs/ stays in step with the code it describes."""

from __future__ import annotations

import os
import re

from harness import ROOT
from tornado_gateway import config
from tornado_gateway.config import doc as config_doc
from tornado_gateway.internal.ingress import SERVER_EVENTS


def read(*path: str) -> str:
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def test_configuration_doc_is_generated_from_the_option_table():
    assert read("docs", "configuration.md") == config_doc.render(), \
        "regenerate: python -m tornado_gateway.config.doc > docs/configuration.md"


def test_configuration_doc_names_every_option_with_each_variable_and_flag():
    rows = [line for line in read("docs", "configuration.md").splitlines() if line.startswith("| `")]
    for name, envs, *_ in config._OPTIONS:
        row = [r for r in rows if f"`--{name.replace('_', '-')}` / `{name}`" in r]
        assert len(row) == 1, name
        assert all(f"`{env}`" in row[0] for env in envs), name


def test_readme_is_short_and_starts_with_the_devstack():
    readme = read("README.md")
    assert len(readme.splitlines()) <= 200
    commands = [line.strip() for line in readme.splitlines() if line.startswith("    ") and line.strip()]
    # The two set-up commands: a fresh venv that runs the devstack, then the test command
    # (the one .ci/run runs).
    assert commands[0].startswith("python3 -m venv .venv && ")
    assert commands[0].endswith(" -m tornado_gateway --devstack")
    assert commands[1] == ".venv/bin/python -m pytest -q tests"
    assert commands[1] in read(".ci", "run")


def test_readme_links_resolve():
    readme = read("README.md")
    links = set(re.findall(r"\]\(([^)#]+)\)", readme))
    assert {"docs/events.md", "docs/services.md", "docs/configuration.md", "docs/operations.md",
            "docs/validation.md", "docs/architecture.md"} <= links
    missing = [link for link in links if not os.path.exists(os.path.join(ROOT, link))]
    assert not missing


def test_events_doc_covers_every_event():
    events = read("docs", "events.md")
    client = ("auth:hello", "chat:create", "chat:join", "chat:leave", "message:send", "message:read",
              "typing:start", "typing:stop", "reaction:set")
    for event in (*SERVER_EVENTS, *client):
        assert f"`{event}`" in events, event


def test_services_doc_says_what_a_service_receives():
    services = read("docs", "services.md")
    for header in ("X-User-Id", "X-Request-ID", "Idempotency-Key", "Authorization", "X-Forwarded-For"):
        assert f"`{header}`" in services, header
    assert "POST /internal/events" in services and "PUBLISH gateway:events" in services
