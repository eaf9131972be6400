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

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_workdir
hz=$(getconf CLK_TCK)
GW_PORT=$(free_port)
start_nginx_stub "$TRANSFER"
gateway_env "$GW_PORT"
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

TOKEN=$(bench_token)
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
