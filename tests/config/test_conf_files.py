"""conf/ works as shipped: supervisor under a real supervisord, nginx -t, the systemd template unit."""

from __future__ import annotations

import configparser
import getpass
import grp
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from harness import ROOT, free_port, wait_for_port
from tornado_gateway import config

CONF = os.path.join(ROOT, "conf")
SERVICE_PORTS = set(range(3001, 3007))
SECRETS = {"JWT_ACCESS_SECRET": "conf-test-access-secret-0123456789abcdefghijkl",
           "JWT_REFRESH_SECRET": "conf-test-refresh-secret-0123456789abcdefghijk",
           "INTERNAL_AUTH_PASSWORD": "conf-test-internal-password-0123456789"}


def read(name: str) -> str:
    with open(os.path.join(CONF, name)) as f:
        return f.read()


def install_etc(tmp: str, redis_server) -> str:
    """/etc/tornado_gateway as the install step makes it: both example files, the secrets filled in."""
    etc = os.path.join(tmp, "etc")
    os.makedirs(etc)
    env = read("gateway.env.example")
    for name, value in SECRETS.items():
        env, count = re.subn(rf"^{name}=$", f"{name}={value}", env, flags=re.M)
        assert count == 1, name
    env = re.sub(r"^REDIS_PORT=.*$", f"REDIS_PORT={redis_server.port}", env, flags=re.M)
    env = re.sub(r"^REDIS_HOST=.*$", "REDIS_HOST=127.0.0.1", env, flags=re.M)
    with open(os.path.join(etc, "gateway.env"), "w") as f:
        f.write(env)
    shutil.copy(os.path.join(CONF, "gateway.conf.example"), os.path.join(etc, "gateway.conf"))
    return etc


def free_block() -> int:
    """A three-digit prefix P whose ports P00..P03 are all free."""
    while True:
        prefix = free_port() // 100
        if all(_free(prefix * 100 + n) for n in range(4)):
            return prefix


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_ready(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway on {port} not ready")
        time.sleep(0.1)


# -- supervisor ------------------------------------------------------------------

def test_supervisor_section_runs_under_a_real_supervisord(redis_server):
    supervisord = os.path.join(os.path.dirname(sys.executable), "supervisord")
    supervisorctl = os.path.join(os.path.dirname(sys.executable), "supervisorctl")
    if not os.path.exists(supervisord):
        pytest.fail("supervisord missing: pip install -e '.[test]' installs supervisor")
    tmp = tempfile.mkdtemp(prefix="gw-supervisor-")
    etc = install_etc(tmp, redis_server)
    logs = os.path.join(tmp, "log")
    os.makedirs(logs)
    public, internal = free_block(), free_block()
    section = read("supervisor.conf")
    for old, new in (("/opt/tornado_gateway/.venv/bin/python", sys.executable), ("/opt/tornado_gateway", ROOT),
                     ("/etc/tornado_gateway", etc), ("/var/log/tornado_gateway", logs),
                     ("user=gateway", f"user={getpass.getuser()}"),
                     ('PORT="80%(process_num)02d"', f'PORT="{public}%(process_num)02d"'),
                     ('INTERNAL_PORT="81%(process_num)02d"', f'INTERNAL_PORT="{internal}%(process_num)02d"')):
        assert old in section, old
        section = section.replace(old, new)
    with open(os.path.join(tmp, "tornado_gateway.conf"), "w") as f:
        f.write(section)
    main_conf = os.path.join(tmp, "supervisord.conf")
    with open(main_conf, "w") as f:
        f.write(f"""[unix_http_server]
file={tmp}/supervisor.sock
[supervisord]
nodaemon=true
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
childlogdir={tmp}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{tmp}/supervisor.sock
[include]
files = {tmp}/tornado_gateway.conf
""")
    proc = subprocess.Popen([supervisord, "-c", main_conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctl = [supervisorctl, "-c", main_conf]
    try:
        for n in range(4):
            wait_for_port(public * 100 + n, timeout=30, proc=proc)
            wait_ready(public * 100 + n)
            wait_for_port(internal * 100 + n, timeout=5)
        deadline = time.monotonic() + 20  # RUNNING once startsecs passed
        while (status := subprocess.run([*ctl, "status"], capture_output=True, text=True,
                                        timeout=20).stdout).count("RUNNING") < 4:
            assert time.monotonic() < deadline and "FATAL" not in status and "BACKOFF" not in status, status
            time.sleep(0.3)
        stopped = subprocess.run([*ctl, "stop", "tornado_gateway:*"], capture_output=True, text=True, timeout=60)
        assert stopped.stdout.count("stopped") == 4, stopped.stdout
        with open(os.path.join(tmp, "supervisord.log")) as f:
            log = f.read()
        assert log.count("(exit status 0)") == 4 and "SIGKILL" not in log, log
        with open(os.path.join(logs, "tornado_gateway_00.log")) as f:
            assert "drained; exiting" in f.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_supervisor_ports_stay_clear_of_the_services():
    parser = configparser.RawConfigParser()
    parser.read(os.path.join(CONF, "supervisor.conf"))
    program = parser["program:tornado_gateway"]
    ports = set()
    for num in range(int(program["numprocs"])):
        expanded = program["environment"].replace("%(process_num)02d", f"{num:02d}")
        values = dict(re.findall(r'(\w+)="([^"]*)"', expanded))
        ports |= {int(values["PORT"]), int(values["INTERNAL_PORT"])}
    assert not ports & SERVICE_PORTS
    upstreams = {int(p) for p in re.findall(r"server 127\.0\.0\.1:(\d+)", read("nginx.conf.example"))}
    public = {p for p in ports if p < 8100}
    assert upstreams == public  # nginx spreads over exactly the supervised public ports


# -- nginx -------------------------------------------------------------------------

def test_nginx_example_is_a_complete_file_that_passes_nginx_t():
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        pytest.skip("nginx is not installed (.ci/run installs it)")
    path = os.path.join(CONF, "nginx.conf.example")
    if os.geteuid() != 0:  # as a user: the same file with its log and pid paths in a temporary directory
        tmp = tempfile.mkdtemp(prefix="gw-nginx-")
        text = read("nginx.conf.example").replace("/var/log/nginx", tmp).replace("/run/nginx.pid", f"{tmp}/nginx.pid")
        path = os.path.join(tmp, "nginx.conf")
        with open(path, "w") as f:
            f.write(re.sub(r"^user .*;$", "", text, flags=re.M))
    result = subprocess.run([nginx, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# -- systemd ------------------------------------------------------------------------

def unit_text(etc: str) -> str:
    """The template unit with the install paths of this checkout and this user."""
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    text = read("tornado_gateway@.service")
    for old, new in (("/opt/tornado_gateway/.venv/bin/python", sys.executable), ("/opt/tornado_gateway", ROOT),
                     ("/etc/tornado_gateway", etc), ("User=gateway", f"User={user}"),
                     ("Group=gateway", f"Group={group}")):
        assert old in text, old
        text = text.replace(old, new)
    return text


def test_systemd_template_unit_stops_with_sigterm_after_the_drain():
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str
    parser.read(os.path.join(CONF, "tornado_gateway@.service"))
    service = parser["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > config.Settings().drain_timeout


def test_systemd_template_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not available here")
    (tmp_path / "tornado_gateway@.service").write_text(unit_text(str(tmp_path)))
    result = subprocess.run([analyze, "verify", str(tmp_path / "tornado_gateway@8000.service")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_unit_command_and_environment_start_a_draining_gateway(redis_server, tmp_path):
    """What systemd would run for an instance: its Environment= and ExecStart=, with %i a free port."""
    etc = install_etc(str(tmp_path), redis_server)
    text = unit_text(etc)
    port = next(p for p in iter(lambda: random.randrange(2000, 10000), None)
                if _free(p) and _free(int(f"1{p}")))  # 1%i must stay a port: instances of 4 digits
    expand = lambda line: line.replace("%i", str(port))  # noqa: E731
    environment = dict(item.split("=", 1) for item in
                       shlex.split(expand(re.search(r"^Environment=(.*)$", text, re.M).group(1))))
    command = shlex.split(expand(re.search(r"^ExecStart=(.*)$", text, re.M).group(1)))
    proc = subprocess.Popen(command, env={"PATH": os.environ.get("PATH", ""), **environment}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout=20, proc=proc)
        wait_ready(port)
        wait_for_port(int(f"1{port}"), timeout=5)  # INTERNAL_PORT=1%i
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
