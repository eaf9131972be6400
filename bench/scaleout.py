"""Scale-out benchmark: what each gateway node receives from Redis per delivered event.

For each N in --nodes (default 2, 4, 8) it starts one redis-server (or, with
--cluster, a 3-master Redis Cluster), a fast chats/messages stub
(bench/socket_stub.py) and N gateway processes in the production
configuration (NODE_ENV=production, access log at info, Redis rate limits
with limits high enough that nothing is refused). Python Socket.IO clients
(websocket transport, --sockets-per-node users on each node) join chats laid
out so that every chat has its members on one node or on two neighbouring
nodes; one member of each chat sends ``message:send`` at --rate per node
(the total grows with N, as it would with N times the users) for --duration seconds. Then it prints, per N and per fan-out mode:

- delivered: ``message:new`` events the clients received;
- in msgs/s/node: pub/sub messages a node received from Redis per second
  (mean over nodes), and in/local deliv: those messages per ``message:new``
  delivered to that node's own sockets (mean over nodes). Read from each node's
  ``gateway_cluster_messages_in_total`` when the gateway has that metric;
  for a gateway without it (today's broadcast, where every node subscribes
  to the one broadcast channel) it is derived from Redis: every PUBLISH
  reaches every node, so each node received ``cmdstat_publish`` calls (the
  column says ``derived``);
- redis CPU us/delivered: Redis's ``used_cpu_sys + used_cpu_user`` (INFO cpu,
  summed over the masters) during the run, per delivered event;
- gateway CPU us/delivered: the gateway processes' CPU, per delivered event.

--modes picks the fan-out modes: ``current`` runs the gateway as it is
(no setting passed); ``rooms`` and ``broadcast`` pass SOCKET_FANOUT=rooms /
broadcast to a gateway that has that setting.

    .venv/bin/python bench/scaleout.py [--nodes 2,4,8] [--rate 25] [--duration 10]
                                       [--sockets-per-node 4] [--modes current] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import socketio  # noqa: E402

from harness import ORIGIN, GatewayProcess, RedisServer, free_port, make_token, wait_for_port  # noqa: E402

INTERNAL_USER, INTERNAL_PASSWORD = "bench", "bench-internal-password-0123456789"
UNLIMITED = "100000000/1"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_info(port: int, section: str) -> str:
    return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "INFO", section],
                          capture_output=True, text=True, timeout=10).stdout


def redis_cpu(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        info = redis_info(port, "cpu")
        for name in ("used_cpu_sys", "used_cpu_user"):
            total += float(re.search(rf"^{name}:([\d.]+)", info, re.M).group(1))
    return total


def redis_publishes(ports: list[int]) -> int:
    """PUBLISH and SPUBLISH calls so far, summed over the servers."""
    total = 0
    for port in ports:
        for match in re.finditer(r"^cmdstat_s?publish:calls=(\d+)", redis_info(port, "commandstats"), re.M):
            total += int(match.group(1))
    return total


def metric_total(gateway: GatewayProcess, name: str) -> float | None:
    """A counter's value (summed over labels) from the node's /metrics; None when it has none."""
    import base64

    request = urllib.request.Request(gateway.internal_base + "/metrics", headers={
        "Authorization": "Basic " + base64.b64encode(f"{INTERNAL_USER}:{INTERNAL_PASSWORD}".encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    if f"# TYPE {name} counter" not in text and f"# TYPE {name.removesuffix('_total')} counter" not in text:
        return None
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([\d.e+]+)$", text, re.M))


def layout(nodes: int, per_node: int) -> tuple[list[tuple[str, int]], list[tuple[str, list[str]]]]:
    """Users (name, node) and chats (id, members): each chat on one node or two neighbours."""
    users = [(f"u{n}-{i}", n) for n in range(nodes) for i in range(per_node)]
    chats = []
    for n in range(nodes):
        mine = [u for u, node in users if node == n]
        nxt = [u for u, node in users if node == (n + 1) % nodes]
        for i in range(0, per_node - 1, 2):
            chats.append((f"local-{n}-{i}", [mine[i], mine[i + 1]]))  # members on node n only
            chats.append((f"pair-{n}-{i}", [mine[i], nxt[i + 1]]))  # node n and its neighbour
    return users, chats


async def drive(gateways: list[GatewayProcess], nodes: int, per_node: int, rate: float,
                duration: float) -> dict:
    users, chats = layout(nodes, per_node)
    clients: dict[str, socketio.AsyncClient] = {}
    received = {"n": 0}
    per_node = [0] * nodes  # message:new received by the users of each node

    async def connect(user: str, node: int) -> None:
        client = socketio.AsyncClient(reconnection=False)

        @client.on("message:new")
        async def on_message(data):
            received["n"] += 1
            per_node[node] += 1
            return {"ok": True}

        await client.connect(gateways[node].base, transports=["websocket"], headers={"Origin": ORIGIN},
                             auth={"token": make_token(user, ttl=3600)}, wait_timeout=20)
        clients[user] = client

    await asyncio.gather(*(connect(u, n) for u, n in users))
    for chat, members in chats:
        for member in members:
            reply = await clients[member].call("chat:join", {"chatId": chat}, timeout=20)
            if not reply.get("ok"):
                raise RuntimeError(f"chat:join {chat} by {member}: {reply}")
    await asyncio.sleep(0.5)  # presence announcements of the joins settle before counting
    received["n"] = 0
    per_node[:] = [0] * nodes
    senders = [(chat, members[0]) for chat, members in chats]
    expected_per_send = {chat: len(members) - 1 for chat, members in chats}
    sent = expected = 0
    interval = 1.0 / (rate * nodes)
    start = time.monotonic()
    next_at = start
    i = 0
    pending = set()
    while time.monotonic() - start < duration:
        chat, sender = senders[i % len(senders)]
        i += 1
        pending.add(asyncio.ensure_future(clients[sender].call(
            "message:send", {"chatId": chat, "clientMessageId": f"b{i}", "text": "x" * 40}, timeout=30)))
        sent += 1
        expected += expected_per_send[chat]
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pending = {p for p in pending if not p.done()}
    if pending:
        await asyncio.wait(pending, timeout=30)
    deadline = time.monotonic() + 10
    while received["n"] < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - start
    await asyncio.gather(*(c.disconnect() for c in clients.values()), return_exceptions=True)
    return {"sent": sent, "expected": expected, "delivered": received["n"], "seconds": elapsed,
            "delivered_per_node": list(per_node)}


def start_redis(cluster: bool):
    if cluster:
        from redis_cluster import RedisCluster

        server = RedisCluster().start()
        return server, server.url, [node.port for node in server.nodes]
    server = RedisServer().start()
    return server, server.url, [server.port]


def run_one(nodes: int, mode: str, args, stub_url: str) -> dict:
    redis, url, ports = start_redis(args.cluster)
    env = {
        "NODE_ENV": "production", "LOG_LEVEL": "info", "REDIS_URL": url,
        "CHATS_SERVICE_URL": stub_url, "MESSAGES_SERVICE_URL": stub_url,
        "INTERNAL_AUTH_USER": INTERNAL_USER, "INTERNAL_AUTH_PASSWORD": INTERNAL_PASSWORD,
        "SOCKET_RATE_MESSAGE": UNLIMITED, "SOCKET_RATE_CONNECT": UNLIMITED, "SOCKET_RATE_JOIN": UNLIMITED,
        "SOCKET_RATE_TYPING": UNLIMITED, "RATE_LIMIT_USER": UNLIMITED, "RATE_LIMIT_IP": UNLIMITED,
        "MAX_CONNECTIONS_PER_IP": "0", "MAX_CONNECTIONS_PER_USER": "0",
    }
    if mode != "current":
        env["SOCKET_FANOUT"] = mode
    gateways = [GatewayProcess(env) for _ in range(nodes)]
    try:
        for gateway in gateways:
            gateway.start()
        time.sleep(0.5)
        metric = "gateway_cluster_messages_in_total"
        before_in = [metric_total(g, metric) for g in gateways]
        before_cpu = redis_cpu(ports)
        before_pub = redis_publishes(ports)
        before_gw = sum(cpu_seconds(g.proc.pid) for g in gateways)
        result = asyncio.run(drive(gateways, nodes, args.sockets_per_node, args.rate, args.duration))
        redis_cpu_used = redis_cpu(ports) - before_cpu
        publishes = redis_publishes(ports) - before_pub
        gateway_cpu = sum(cpu_seconds(g.proc.pid) for g in gateways) - before_gw
        after_in = [metric_total(g, metric) for g in gateways]
        delivered = max(result["delivered"], 1)
        if all(v is not None for v in before_in + after_in):
            per_node = [a - b for a, b in zip(after_in, before_in)]
            source = "metric"
        else:  # broadcast without the metric: every node receives every PUBLISH
            per_node = [publishes] * nodes
            source = "derived"
        result.update({
            "nodes": nodes, "mode": mode, "source": source, "publishes": publishes,
            "node_msgs": [round(v) for v in per_node],
            "node_msgs_per_s": round(sum(per_node) / nodes / result["seconds"], 1),
            "msgs_per_local_delivered": round(sum(
                m / max(d, 1) for m, d in zip(per_node, result["delivered_per_node"])) / nodes, 3),
            "redis_cpu_us_per_delivered": round(redis_cpu_used * 1e6 / delivered, 1),
            "gateway_cpu_us_per_delivered": round(gateway_cpu * 1e6 / delivered, 1),
        })
        return result
    finally:
        for gateway in gateways:
            gateway.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="2,4,8")
    parser.add_argument("--rate", type=float, default=25.0,
                        help="message:send per second per node (the load grows with N, as users would)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--sockets-per-node", type=int, default=4)
    parser.add_argument("--modes", default="current", help="current, rooms, broadcast (comma-separated)")
    parser.add_argument("--cluster", action="store_true", help="a 3-master Redis Cluster instead of one server")
    parser.add_argument("--json", action="store_true", help="one JSON line per run instead of the table")
    args = parser.parse_args()
    stub_port = free_port()
    stub = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "socket_stub.py"), str(stub_port)])
    try:
        wait_for_port(stub_port)
        stub_url = f"http://127.0.0.1:{stub_port}"
        if not args.json:
            print(f"{'N':>3} {'mode':<10} {'sent':>6} {'delivered':>9} {'in msgs/s/node':>14} "
                  f"{'in/local deliv':>14} {'source':<8} {'redis us/deliv':>14} {'gw us/deliv':>11}  "
                  f"per-node msgs")
        for nodes in [int(n) for n in args.nodes.split(",")]:
            for mode in args.modes.split(","):
                r = run_one(nodes, mode, args, stub_url)
                if args.json:
                    print(json.dumps(r), flush=True)
                    continue
                lost = "" if r["delivered"] >= r["expected"] else f" (LOST {r['expected'] - r['delivered']})"
                print(f"{nodes:>3} {mode:<10} {r['sent']:>6} {r['delivered']:>9} "
                      f"{r['node_msgs_per_s']:>14} {r['msgs_per_local_delivered']:>14} {r['source']:<8} "
                      f"{r['redis_cpu_us_per_delivered']:>14} {r['gateway_cpu_us_per_delivered']:>11}  "
                      f"{r['node_msgs']}{lost}", flush=True)
    finally:
        stub.terminate()
        stub.wait()


if __name__ == "__main__":
    main()
