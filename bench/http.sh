#!/usr/bin/env bash
# HTTP edge benchmark: nginx directly vs one gateway process, then 1 GiB each way.
# Usage: bash bench/http.sh            (see bench/README.md for the knobs)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
DURATION=${BENCH_DURATION:-10s}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
TRANSFER=${BENCH_TRANSFER:-1G}          # size of the streamed download/upload
SLOW_RATE=${BENCH_SLOW_RATE:-100M}      # curl --limit-rate of the slow client
SKIP_TRANSFERS=${BENCH_SKIP_TRANSFERS:-0}
GATEWAY_CMD=${BENCH_GATEWAY_CMD:-}      # e.g. "bench/standalone_proxy.py {port} {upstream}"

missing=()
for tool in nginx wrk curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  echo "missing: ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
  exit 2
fi
[[ -x $PY ]] || { echo "no python at $PY (make the venv: see README)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/gw-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sys_ticks() { awk '{print $15}' "/proc/$1/stat"; }  # the kernel's part (syscalls)
hz=$(getconf CLK_TCK)

NGINX_PORT=$(free_port)
GW_PORT=$(free_port)
mkdir -p "$WORK/files" "$WORK/tmp"
truncate -s "$TRANSFER" "$WORK/files/big.bin"   # sparse: costs no disk
chmod 755 "$WORK" "$WORK/files"; chmod 644 "$WORK/files/big.bin"  # nginx workers may run as nobody
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  # One line per request: the connection serial number and its request count.
  # A line with connection_requests == 1 is a new upstream connection.
  log_format conn '\$connection \$connection_requests';
  client_body_temp_path $WORK/tmp/body;
  proxy_temp_path $WORK/tmp/proxy;
  fastcgi_temp_path $WORK/tmp/fcgi;
  uwsgi_temp_path $WORK/tmp/uwsgi;
  scgi_temp_path $WORK/tmp/scgi;
  keepalive_timeout 75s;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    client_max_body_size 0;
    location / {
      access_log $WORK/conn.log conn buffer=64k flush=1s;
      default_type application/json;
      return 200 '{"id":"42","name":"bench","email":"bench@example.com"}';
    }
    # /media/* is the gateway's MEDIA upstream; /api/media/* serves BENCH_GATEWAY_CMD proxies
    # that keep the path. POSTs to .../upload are read and discarded by nginx.
    location /media/ { alias $WORK/files/; }
    location = /media/upload { return 204; }
    location /api/media/ { alias $WORK/files/; }
    location = /api/media/upload { return 204; }
  }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK" >"$WORK/nginx.out" 2>&1 &
PIDS+=($!)
wait_port "$NGINX_PORT"

SECRET=bench-access-secret-0123456789abcdef0123456789
export NODE_ENV=development HOST=127.0.0.1 PORT=$GW_PORT INTERNAL_PORT=0 \
  LOG_LEVEL=${BENCH_LOG_LEVEL:-warning} \
  JWT_ACCESS_SECRET=$SECRET JWT_REFRESH_SECRET=bench-refresh-secret-0123456789abcdef012345 \
  REDIS_URL=${BENCH_REDIS_URL:-memory://} \
  RATE_LIMIT_ENABLED=$([[ ${BENCH_RATE_LIMIT:-0} == 1 ]] && echo true || echo false) \
  RATE_LIMIT_USER=1000000000/60 RATE_LIMIT_IP=1000000000/60 \
  USERS_SERVICE_URL=http://127.0.0.1:$NGINX_PORT/users \
  MEDIA_SERVICE_URL=http://127.0.0.1:$NGINX_PORT/media \
  MEDIA_MAX_BODY_SIZE=$((1 << 40)) UPSTREAM_TIMEOUT=600
if [[ -n $GATEWAY_CMD ]]; then
  cmd=${GATEWAY_CMD//\{port\}/$GW_PORT}
  cmd=${cmd//\{upstream\}/http://127.0.0.1:$NGINX_PORT}
  # shellcheck disable=SC2086
  (cd "$ROOT" && exec "$PY" $cmd) >"$WORK/gateway.log" 2>&1 &
else
  (cd "$ROOT" && exec "$PY" -m tornado_gateway) >"$WORK/gateway.log" 2>&1 &
fi
GW_PID=$!
PIDS+=("$GW_PID")
wait_port "$GW_PORT"

TOKEN=$("$PY" -c 'import jwt,sys,time; print(jwt.encode({"sub":"bench-user","iat":int(time.time()),"exp":int(time.time())+3600}, sys.argv[1], algorithm="HS256"))' "$SECRET")
AUTH="Authorization: Bearer $TOKEN"
URL_PATH=/api/users/42

code=$(curl -s -o "$WORK/probe" -w '%{http_code}' -H "$AUTH" "http://127.0.0.1:$GW_PORT$URL_PATH")
if [[ $code != 200 ]]; then
  echo "gateway answered $code to $URL_PATH: $(cat "$WORK/probe")" >&2
  tail -5 "$WORK/gateway.log" >&2
  exit 1
fi

# wrk prints latency percentiles with --latency; pull req/s, p50, p99.
run_wrk() {  # url -> "req/s p50 p99 requests"
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "$AUTH" "$1" >"$WORK/wrk.out"
  awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
       / requests in / {n=$1} /Non-2xx/ {bad=$NF}
       END {print rps, p50, p99, n, (bad ? bad : 0)}' "$WORK/wrk.out"
}
new_connections() { awk -v from="$1" 'NR > from && $2 == 1 {n++} END {print n + 0}' "$WORK/conn.log"; }

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"
echo "nginx :$NGINX_PORT  gateway :$GW_PORT (pid $GW_PID)  wrk -t1 -c$CONNECTIONS -d$DURATION"

read -r direct_rps direct_p50 direct_p99 _ _ < <(run_wrk "http://127.0.0.1:$NGINX_PORT/users/42")
wrk -t1 -c"$CONNECTIONS" -d2s -H "$AUTH" "http://127.0.0.1:$GW_PORT$URL_PATH" >/dev/null  # warm-up
sleep 1.5  # nginx flushes its access log buffer every second
log_before=$(wc -l <"$WORK/conn.log")
ticks_before=$(cpu_ticks "$GW_PID")
sys_before=$(sys_ticks "$GW_PID")
if [[ -n ${BENCH_PROFILE:-} ]]; then  # py-spy samples the gateway during its wrk run
  "$(dirname "$PY")/py-spy" record --pid "$GW_PID" --duration "${DURATION%s}" --nonblocking \
    --format "$([[ $BENCH_PROFILE == *.svg ]] && echo flamegraph || echo raw)" \
    --output "$BENCH_PROFILE" >/dev/null 2>&1 &
  PIDS+=($!)
fi
read -r gw_rps gw_p50 gw_p99 gw_requests gw_bad < <(run_wrk "http://127.0.0.1:$GW_PORT$URL_PATH")
ticks_after=$(cpu_ticks "$GW_PID")
sys_after=$(sys_ticks "$GW_PID")
sleep 1.5
opened=$(new_connections "$log_before")

# The floor: a bare Tornado handler, same machine, same moment (see bench/tornado_floor.py).
FLOOR_PORT=$(free_port)
"$PY" "$ROOT/bench/tornado_floor.py" "$FLOOR_PORT" >"$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")
wait_port "$FLOOR_PORT"
floor_before=$(cpu_ticks "$FLOOR_PID")
read -r floor_rps _ _ floor_requests _ < <(run_wrk "http://127.0.0.1:$FLOOR_PORT/users/42")
floor_after=$(cpu_ticks "$FLOOR_PID")
kill "$FLOOR_PID"

"$PY" - "$direct_rps" "$direct_p50" "$direct_p99" "$gw_rps" "$gw_p50" "$gw_p99" "$gw_requests" \
  "$gw_bad" "$((ticks_after - ticks_before))" "$hz" "$opened" \
  "$floor_rps" "$floor_requests" "$((floor_after - floor_before))" "$((sys_after - sys_before))" <<'EOF'
import sys
d_rps, d50, d99, g_rps, g50, g99, n, bad, ticks, hz, opened, f_rps, f_n, f_ticks, sys_ticks = sys.argv[1:]
n = int(n)
print(f"{'':10} {'req/s':>10} {'p50':>9} {'p99':>9}")
print(f"{'nginx':10} {float(d_rps):>10.0f} {d50:>9} {d99:>9}")
print(f"{'gateway':10} {float(g_rps):>10.0f} {g50:>9} {g99:>9}")
print(f"gateway/nginx throughput: {float(g_rps) / float(d_rps):.3f}")
print(f"gateway CPU per request: {int(ticks) / int(hz) * 1e6 / n:.0f} us, of which system "
      f"{int(sys_ticks) / int(hz) * 1e6 / n:.0f} us ({n} requests, {bad} non-2xx)")
print(f"upstream connections opened per request: {int(opened) / n:.4f} ({opened} opened)")
print(f"floor, bare Tornado handler: {float(f_rps):.0f} req/s, "
      f"{int(f_ticks) / int(hz) * 1e6 / int(f_n):.0f} us CPU per request")
EOF

[[ $SKIP_TRANSFERS == 1 ]] && exit 0

# Poll the gateway's VmRSS every 20 ms while a command runs; print time and peak growth.
transfer() {  # label, curl args...
  local label=$1; shift
  "$PY" - "$GW_PID" "$label" "$@" <<'EOF'
import subprocess, sys, time
pid, label, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
def rss():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024
base = peak = rss()
start = time.monotonic()
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
while proc.poll() is None:
    peak = max(peak, rss())
    time.sleep(0.02)
elapsed = time.monotonic() - start
out = proc.stdout.read().strip()
print(f"{label:34} {elapsed:7.1f} s  peak RSS growth {(peak - base) / 2**20:6.1f} MiB  "
      f"(RSS before {base / 2**20:.0f} MiB; curl: {out})")
EOF
}

MEDIA=http://127.0.0.1:$GW_PORT/api/media
CURL=(curl -s -S -H "$AUTH" -o /dev/null -w '%{http_code} %{size_download}B down %{size_upload}B up')
echo "streaming $TRANSFER through the gateway (slow client: curl --limit-rate $SLOW_RATE):"
transfer "download, full speed" "${CURL[@]}" "$MEDIA/big.bin"
transfer "download, slow client" "${CURL[@]}" --limit-rate "$SLOW_RATE" "$MEDIA/big.bin"
transfer "upload, full speed" "${CURL[@]}" -H 'Expect:' -H 'Content-Type: application/octet-stream' \
  -X POST -T "$WORK/files/big.bin" "$MEDIA/upload"
transfer "upload, slow client" "${CURL[@]}" -H 'Expect:' -H 'Content-Type: application/octet-stream' \
  --limit-rate "$SLOW_RATE" -X POST -T "$WORK/files/big.bin" "$MEDIA/upload"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
