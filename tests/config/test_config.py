"""Configuration of a real ``python -m tornado_gateway``: sources, precedence, refusals.

Precedence is proved with settings visible from outside: the port it listens
on, the origin its CORS echoes, the upstream path a proxied request lands on.
"""

import configparser
import dataclasses
import os
import re
import socket

import pytest

from harness import ACCESS_SECRET, REFRESH_SECRET, ROOT, GatewayProcess, free_port, make_token, run_gateway_cli
from tornado_gateway import config

AUTH = {"Authorization": f"Bearer {make_token('u-config')}"}
# Safe base for runs expected to fail: if one started anyway it would bind nothing fixed.
CLI_ENV = {"PORT": "0", "INTERNAL_PORT": "0", "HOST": "127.0.0.1", "REDIS_URL": "memory://"}
SECRET = "s3cr3t-never-shown-9c1f"


@pytest.fixture
def processes():
    started = []
    yield started
    for process in started:
        process.stop()


def cors_origin(process: GatewayProcess, origin: str):
    import urllib.request

    request = urllib.request.Request(process.url("/healthz"), headers={"Origin": origin})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers.get("Access-Control-Allow-Origin")


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_flag_beats_env_beats_config_file_beats_default(tmp_path, stubs, processes):
    env_port, file_port = free_port(), free_port()
    conf = write(tmp_path, "gw.conf", "\n".join([
        f"port = {file_port}",
        "allowed_origins = 'http://file.test'",
        f"users_service_url = '{stubs.url('users', '/from-file')}'",
        "drain_timeout = 3  # an int for a float setting is fine",
    ]))
    process = GatewayProcess({**stubs.env(), "USERS_SERVICE_URL": None, "PORT": str(env_port),
                              "ALLOWED_ORIGINS": "http://env.test"})
    process.args = ["--port", str(process.port), "--config", conf]  # `--name value` form
    processes.append(process.start())
    # flag > env > file: it listens on the flag's port only.
    assert process.get_json("/healthz")[0] == 200
    for port in (env_port, file_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    # env > file: the environment's origin is the allowed one.
    assert cors_origin(process, "http://env.test") == "http://env.test"
    assert cors_origin(process, "http://file.test") is None
    # file > default: the users upstream comes from the file.
    status, body = process.get_json("/api/users/echo?x=1", headers=AUTH)
    assert status == 200 and body["uri"] == "/from-file/echo?x=1"
    # default: an origin nobody set is the built-in one.
    assert cors_origin(process, "http://localhost:5173") is None  # overridden here ...


def test_defaults_apply_when_nothing_is_set(stubs, processes):
    process = GatewayProcess({**stubs.env(), "ALLOWED_ORIGINS": None})
    processes.append(process.start())
    # ... and the default when no source sets ALLOWED_ORIGINS.
    assert cors_origin(process, "http://localhost:5173") == "http://localhost:5173"
    assert cors_origin(process, "http://app.test:5173") is None


def test_env_file_is_loaded_and_the_real_environment_wins(tmp_path, stubs, processes):
    env_file = write(tmp_path, "gateway.env", "\n".join([
        "# a dotenv file",
        "ALLOWED_ORIGINS=http://dotenv.test",
        f"PORT={free_port()}",
        'JWT_ACCESS_SECRET="quoted-secret-from-dotenv-file-0123456789"',
    ]))
    process = GatewayProcess({**stubs.env(), "ALLOWED_ORIGINS": None}, [f"--env-file={env_file}"])
    processes.append(process.start())  # waits on the real environment's PORT
    assert cors_origin(process, "http://dotenv.test") == "http://dotenv.test"
    # The real environment's JWT_ACCESS_SECRET beat the file's: harness tokens still verify.
    assert process.get_json("/api/users/echo", headers=AUTH)[0] == 200


def test_example_config_file_is_accepted_and_complete(stubs, processes):
    path = os.path.join(ROOT, "conf", "gateway.conf.example")
    process = GatewayProcess(stubs.env(), ["--config", path])
    processes.append(process.start())
    assert process.get_json("/healthz") == (200, {"status": "ok"})
    text = open(path).read()
    for name, envs, _kind, default, _help in config._OPTIONS:
        assert f"# {name} = {default!r}" in text, name
        assert envs[0] in text, envs[0]


def test_help_lists_every_option_and_exits_0():
    result = run_gateway_cli(["--help"])
    assert result.returncode == 0
    for name, envs, *_ in config._OPTIONS:
        assert f"--{name.replace('_', '-')}" in result.stdout
        assert envs[0] in result.stdout
    assert "--config" in result.stdout and "--env-file" in result.stdout


def _conf(tmp_path, text):
    return ["--config", write(tmp_path, "bad.conf", text)]


BAD = [
    # (id, args or callable(tmp_path) -> args, env, words that must be in the line)
    ("unknown flag", ["--no-such-option=1"], {}, ["--no-such-option"]),
    ("stray word", ["serve"], {}, ["serve"]),
    ("single dash", ["-p", "1"], {}, ["-p"]),
    ("flag without value", ["--port"], {}, ["--port"]),
    ("flag not a number", ["--port=abc"], {}, ["--port"]),
    ("env not a number", [], {"PORT": "abc"}, ["PORT"]),
    ("port out of range", [], {"PORT": "70000"}, ["PORT"]),
    ("rate limit", [], {"RATE_LIMIT_USER": "abc"}, ["RATE_LIMIT_USER"]),
    ("origin", [], {"ALLOWED_ORIGINS": "http://ok.test,notanorigin"}, ["ALLOWED_ORIGINS", "notanorigin"]),
    ("origin with path", [], {"ALLOWED_ORIGINS": "http://ok.test/app"}, ["ALLOWED_ORIGINS"]),
    ("redis scheme", [], {"REDIS_URL": "http://redis.test:6379"}, ["REDIS_URL"]),
    ("redis port", [], {"REDIS_URL": f"redis://:{SECRET}@redis.test:abc/0"}, ["REDIS_URL"]),
    ("redis cluster node", [], {"REDIS_URL": f"redis+cluster://:{SECRET}@h1:7000,h2"}, ["REDIS_URL", "h2"]),
    ("socket fanout", [], {"SOCKET_FANOUT": "everywhere"}, ["SOCKET_FANOUT"]),
    ("broadcast on a cluster", [], {"REDIS_URL": "redis+cluster://h1:7000", "SOCKET_FANOUT": "broadcast"},
     ["SOCKET_FANOUT", "Cluster"]),
    ("service url", [], {"USERS_SERVICE_URL": "users:3002"}, ["USERS_SERVICE_URL"]),
    ("service scheme", [], {"MEDIA_SERVICE_URL": f"ftp://admin:{SECRET}@media.test"}, ["MEDIA_SERVICE_URL"]),
    ("trusted proxies", [], {"TRUSTED_PROXIES": "10.0.0.1,garbage"}, ["TRUSTED_PROXIES", "garbage"]),
    ("negative drain", [], {"DRAIN_TIMEOUT": "-1"}, ["DRAIN_TIMEOUT"]),
    ("log level", [], {"LOG_LEVEL": "loud"}, ["LOG_LEVEL"]),
    ("boolean", [], {"RATE_LIMIT_ENABLED": "maybe"}, ["RATE_LIMIT_ENABLED"]),
    ("missing config file", ["--config", "/nonexistent/gw.conf"], {}, ["--config"]),
    ("missing env file", ["--env-file=/nonexistent/.env"], {}, ["--env-file"]),
    ("config unknown setting", lambda t: _conf(t, "prot = 3000\n"), {}, ["prot"]),
    ("config wrong type", lambda t: _conf(t, "port = '3000'\n"), {}, ["port"]),
    ("config syntax", lambda t: _conf(t, "port = = 3\n"), {}, ["syntax", "line 1"]),
    # An unquoted secret is a NameError whose message would echo it: only the line is named.
    ("config unquoted secret", lambda t: _conf(t, f"x = 1\njwt_access_secret = {SECRET.replace('-', '_')}\n"),
     {}, ["line 2"]),
]


@pytest.mark.parametrize("args, env, words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_setting_stops_with_one_line_exit_2_no_secret(tmp_path, args, env, words):
    if callable(args):
        args = args(tmp_path)
    result = run_gateway_cli(args, {**CLI_ENV, "JWT_ACCESS_SECRET": SECRET, **env})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]
    assert SECRET not in result.stderr and SECRET.replace("-", "_") not in result.stderr


GOOD_ACCESS = "a" * 16 + "-access-secret-for-production-0123"
GOOD_REFRESH = "r" * 16 + "-refresh-secret-for-production-0123"
PROD = {"NODE_ENV": "production", "JWT_ACCESS_SECRET": GOOD_ACCESS, "JWT_REFRESH_SECRET": GOOD_REFRESH,
        "ALLOWED_ORIGINS": "https://chat.example.com", "INTERNAL_AUTH_USER": "ops",
        "INTERNAL_AUTH_PASSWORD": SECRET}
REFUSED_IN_PRODUCTION = [
    ("missing access secret", {"JWT_ACCESS_SECRET": None}, ["JWT_ACCESS_SECRET", "missing"]),
    ("example access secret", {"JWT_ACCESS_SECRET": "your-access-secret"}, ["JWT_ACCESS_SECRET", "example"]),
    ("long example secret", {"JWT_REFRESH_SECRET": "your-refresh-secret-change-me-0123456789"},
     ["JWT_REFRESH_SECRET", "example"]),
    ("short secret", {"JWT_ACCESS_SECRET": "x" * 31}, ["JWT_ACCESS_SECRET", "32"]),
    ("same secrets", {"JWT_REFRESH_SECRET": GOOD_ACCESS}, ["differ"]),
    ("star origin", {"ALLOWED_ORIGINS": "https://chat.example.com,*"}, ["ALLOWED_ORIGINS", "*"]),
    ("no internal credentials", {"INTERNAL_PORT": "3100", "INTERNAL_AUTH_PASSWORD": None},
     ["INTERNAL_AUTH_PASSWORD"]),
    ("GATEWAY_ENV alias", {"NODE_ENV": None, "GATEWAY_ENV": "production", "JWT_ACCESS_SECRET": "short"},
     ["JWT_ACCESS_SECRET"]),
]


@pytest.mark.parametrize("env, words", [r[1:] for r in REFUSED_IN_PRODUCTION],
                         ids=[r[0] for r in REFUSED_IN_PRODUCTION])
def test_production_refuses_weak_settings(env, words):
    merged = {**CLI_ENV, **PROD, **env}
    merged = {k: v for k, v in merged.items() if v is not None}
    result = run_gateway_cli([], merged)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "production" in lines[0]
    for word in words:
        assert word in lines[0]
    for secret in (GOOD_ACCESS, GOOD_REFRESH, SECRET, "your-access-secret", "x" * 31):
        if secret != "your-access-secret" or "example" not in words:
            assert secret not in lines[0]


def test_the_same_settings_in_development_start(stubs, processes):
    # NODE_ENV (the harness sets development) wins over its alias GATEWAY_ENV.
    process = GatewayProcess({**stubs.env(), "JWT_ACCESS_SECRET": "your-access-secret",
                              "ALLOWED_ORIGINS": "*", "GATEWAY_ENV": "production"})
    processes.append(process.start())
    assert process.get_json("/healthz")[0] == 200


def test_production_with_strong_settings_starts(stubs, processes):
    process = GatewayProcess({**stubs.env(), **PROD, "JWT_ACCESS_SECRET": ACCESS_SECRET,
                              "JWT_REFRESH_SECRET": REFRESH_SECRET})
    processes.append(process.start())
    assert process.get_json("/healthz")[0] == 200
    assert SECRET not in process.logs()


def test_port_in_use_is_one_log_line_and_nonzero_exit():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_gateway_cli([f"--port={port}"], CLI_ENV)
    assert result.returncode not in (0, None)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stdout.strip().splitlines() if '"level": "error"' in line]
    assert len(lines) == 1  # (CLI_ENV has no JWT secrets: their start-up warnings come before it)
    assert re.search(rf"cannot listen on 127\.0\.0\.1:{port}\b.*in use", lines[0])


def test_supervisor_program_runs_numprocs_with_one_port_each():
    parser = configparser.RawConfigParser()
    parser.read(os.path.join(ROOT, "conf", "supervisor.conf"))
    program = parser["program:tornado_gateway"]
    numprocs = int(program["numprocs"])
    assert numprocs >= 2
    assert "%(process_num)" in program["process_name"]
    assert program["stopsignal"] == "TERM"
    assert float(program["stopwaitsecs"]) > config.Settings().drain_timeout
    assert program["stdout_logfile"]
    environment = program["environment"]
    ports = set()
    internal_ports = set()
    for num in range(numprocs):
        expanded = environment.replace("%(process_num)02d", f"{num:02d}")
        values = dict(re.findall(r'(\w+)="([^"]*)"', expanded))
        ports.add(int(values["PORT"]))
        internal_ports.add(int(values["INTERNAL_PORT"]))
    assert len(ports) == numprocs and len(internal_ports) == numprocs
    assert not ports & internal_ports
    # The command line it runs is one the gateway accepts (flags only, no stray words).
    command = program["command"].split()
    assert command[1:3] == ["-m", "tornado_gateway"]
    flags = config.parse_flags(["gw", *command[3:]], config.make_parser())
    assert set(flags) == {"env_file", "config"}


def test_nginx_example_is_sticky_and_forwards_upgrades():
    text = open(os.path.join(ROOT, "conf", "nginx.conf.example")).read()
    assert re.search(r"hash \$remote_addr consistent;|ip_hash;", text)
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in text
    assert "TRUSTED_PROXIES" in text


def test_configuration_doc_table_lists_every_setting():
    doc = open(os.path.join(ROOT, "docs", "configuration.md")).read()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    for name, envs, *_ in config._OPTIONS:
        assert any(f"`{envs[0]}`" in row and f"`--{name.replace('_', '-')}`" in row for row in rows), name


@pytest.mark.parametrize("url", [
    "rediss://:pw@redis.test:6380/1",
    "redis+sentinel://:pw@s1.test:26379,s2.test:26379/mymaster",
    "unix:///run/redis.sock?db=2",
    "redis://redis.test",
])
def test_redis_url_forms_of_the_spec_are_accepted(url):
    settings = config.load(["gw"], {"REDIS_URL": url})
    assert settings.redis_url == url and not settings.single_node


def test_redis_host_port_password_make_the_url_with_the_password_quoted():
    settings = config.load(["gw"], {"REDIS_HOST": "r.test", "REDIS_PORT": "6390", "REDIS_PASSWORD": "p@ss/w:rd"})
    assert settings.redis_url == "redis://:p%40ss%2Fw%3Ard@r.test:6390/0"
    assert config.secret_values(settings)[-1] == "p@ss/w:rd"


def test_every_setting_comes_from_the_option_table_with_its_default():
    from tornado_gateway.config import settings as settings_module

    table = {name: (kind, default) for name, _envs, kind, default, _help in config._OPTIONS}
    defaults = config.Settings()
    for name in settings_module.PLAIN_FIELDS:  # a field without an option would be a KeyError
        kind, default = table[name]
        assert getattr(defaults, name) == default, name
        assert isinstance(getattr(defaults, name), kind), name
    built = config.build_settings({name: default for name, (_kind, default) in table.items()})
    # The table's defaults build Settings' defaults (routes and redis_url come from several
    # options each, Settings() itself has none).
    assert dataclasses.replace(built, routes=(), redis_url=None) == defaults
    assert len(built.routes) == 6 and built.redis_url == "redis://localhost:6379/0"
