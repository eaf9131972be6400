#!/usr/bin/env bash
# HTTP edge benchmark: the gateway, the Node reference gateway (bench/node_ref/) and the
# upstream (nginx) directly, in ONE run, alternating rounds at 16, 64 and 256 connections,
# with ratios; then 1 GiB streamed each way through the gateway.
# Usage: bash bench/http.sh            (knobs: bench/README.md)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
DURATION=${BENCH_DURATION:-6s}
CONNECTIONS=${BENCH_CONNECTIONS:-16 64 256}
ROUNDS=${BENCH_ROUNDS:-2}
TARGETS=${BENCH_TARGETS:-gateway node upstream}
TRANSFER=${BENCH_TRANSFER:-1G}          # size of the streamed download/upload
SLOW_RATE=${BENCH_SLOW_RATE:-100M}      # curl --limit-rate of the slow client
SKIP_TRANSFERS=${BENCH_SKIP_TRANSFERS:-0}

missing=()
for tool in nginx wrk curl node npm redis-server; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  echo "missing: ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" \
    "(node/npm: nodejs npm, redis-server: redis-server)" >&2
  exit 2
fi
[[ -x $PY ]] || { echo "no python at $PY (make the venv: see README)" >&2; exit 2; }

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_workdir
hz=$(getconf CLK_TCK)
[[ " $TARGETS" == *" node"* ]] && install_node_ref
start_nginx_stub "$TRANSFER"
start_redis
TOKEN=$(bench_token)
AUTH="Authorization: Bearer $TOKEN"

declare -A URL PID LOGF
for spec in $TARGETS; do
  case $spec in
    floor)  # a bare Tornado handler answering the same JSON: what Tornado alone costs
      port=$(free_port)
      "$PY" "$ROOT/bench/tornado_floor.py" "$port" >"$WORK/floor.log" 2>&1 &
      T_PID=$!; PIDS+=("$T_PID"); wait_port "$port"
      T_URL=http://127.0.0.1:$port/users/42; T_LOG=$WORK/floor.log ;;
    custom)  # BENCH_GATEWAY_CMD, e.g. "bench/standalone_proxy.py {port} {upstream} simple"
      port=$(free_port)
      cmd=${BENCH_GATEWAY_CMD//\{port\}/$port}; cmd=${cmd//\{upstream\}/http://127.0.0.1:$NGINX_PORT}
      # shellcheck disable=SC2086
      (gateway_env "$port"; cd "$ROOT" && exec "$PY" $cmd) >"$WORK/custom.log" 2>&1 &
      T_PID=$!; PIDS+=("$T_PID"); wait_port "$port"
      T_URL=http://127.0.0.1:$port/api/users/42; T_LOG=$WORK/custom.log ;;
    *) start_target "$spec" ;;
  esac
  URL[$spec]=$T_URL PID[$spec]=$T_PID LOGF[$spec]=$T_LOG
  code=$(curl -s -o "$WORK/probe" -w '%{http_code}' -H "$AUTH" "$T_URL")
  if [[ $code != 200 ]]; then
    echo "$spec answered $code to $T_URL: $(cat "$WORK/probe")" >&2
    tail -5 "$T_LOG" >&2
    exit 1
  fi
done

new_connections() { awk -v from="$1" 'NR > from && $2 == 1 {n++} END {print n + 0}' "$WORK/conn.log"; }
measure() {  # spec connections: one wrk run after a warm-up, one result line
  local spec=$1 c=$2 pid=${PID[$1]} url=${URL[$1]} before after log_before load
  wrk -t1 -c"$c" -d2s -H "$AUTH" "$url" >/dev/null  # warm-up
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "$spec (pid $pid) is gone; the end of its output:" >&2
    tail -c 3000 "${LOGF[$spec]}" >&2
    exit 1
  fi
  sleep 1.2  # nginx flushes its access log buffer every second
  log_before=$(wc -l <"$WORK/conn.log")
  load=$(cut -d' ' -f1 /proc/loadavg)
  before=$(cpu_ticks "$pid")
  wrk -t1 -c"$c" -d"$DURATION" --latency -H "$AUTH" "$url" >"$WORK/wrk.out"
  if ! after=$(cpu_ticks "$pid" 2>/dev/null); then
    echo "$spec (pid $pid) died during the run; the end of its output:" >&2
    tail -c 3000 "${LOGF[$spec]}" >&2
    exit 1
  fi
  sleep 1.2
  awk -v spec="$spec" -v c="$c" -v round="$round" -v ticks=$((after - before)) -v hz="$hz" \
      -v load1="$load" -v opened="$(new_connections "$log_before")" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ {rps = $2} /^ +50%/ {p50 = $2} /^ +99%/ {p99 = $2} / requests in / {n = $1}
    /Non-2xx/ {bad = $NF} /Socket errors/ {gsub(/,/, ""); errs = $4 + $6 + $8 + $10}
    END {printf "%s %s %s %.0f %.2f %.2f %d %d %d %.0f %d %s\n", round, c, spec, rps, ms(p50), ms(p99),
         n, bad + 0, errs + 0, ticks / hz * 1e6 / (n ? n : 1), opened, load1}' "$WORK/wrk.out" |
    tee -a "$WORK/results"
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "configuration: NODE_ENV=${BENCH_NODE_ENV:-production} LOG_LEVEL=${BENCH_LOG_LEVEL:-info}" \
  "rate limits $([[ ${BENCH_RATE_LIMIT:-1} == 1 ]] && echo "in Redis ($BENCH_REDIS_URL)" || echo off)"
echo "targets: $TARGETS; wrk -t1 -d$DURATION at $CONNECTIONS connections, $ROUNDS round(s)," \
  "order reversed every other round"
echo "round conns target req/s p50ms p99ms requests non2xx sockerr cpu_us/req upstream_conns_opened load1"
for round in $(seq "$ROUNDS"); do
  order=$TARGETS
  ((round % 2 == 0)) && order=$(echo "$TARGETS" | tr ' ' '\n' | tac | tr '\n' ' ')
  for c in $CONNECTIONS; do
    for spec in $order; do measure "$spec" "$c"; done
  done
done

"$PY" - "$WORK/results" "$TARGETS" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
targets = sys.argv[2].split()
print("\nsummary: median over rounds; 'vs node' = req/s over the Node reference's;"
      " 'CPU vs node' = Node's CPU per request over this one's (>1: cheaper than Node)")
print(f"{'conns':>5} {'target':22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10}"
      f" {'errors':>7} {'vs node':>8} {'CPU vs node':>11} {'CPU - first':>11}")
for c in dict.fromkeys(r[1] for r in rows):
    med = {}
    for t in targets:
        mine = [r for r in rows if r[1] == c and r[2] == t]
        if mine:
            med[t] = [statistics.median(float(r[i]) for r in mine) for i in (3, 4, 5, 9)] + \
                     [sum(int(r[7]) + int(r[8]) for r in mine)]
    node = next((v for t, v in med.items() if t.split(":")[0] == "node"), None)
    for t, (rps, p50, p99, cpu, errs) in med.items():
        mine_node = t.split(":")[0] == "node"
        ratio = f"{rps / node[0]:.2f}x" if node and not mine_node else ""
        cpu_ratio = f"{node[3] / cpu:.2f}x" if node and not mine_node and t != "upstream" and cpu else ""
        first = next(iter(med.values()))[3]
        print(f"{c:>5} {t:22} {rps:8.0f} {p50:8.2f} {p99:8.2f} {cpu:10.0f} {errs:7d} {ratio:>8} {cpu_ratio:>11}"
              f" {cpu - first:+11.0f}")
EOF
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

[[ $SKIP_TRANSFERS == 1 ]] && exit 0
first=${TARGETS%% *}
[[ $first == gateway* ]] || exit 0
GW_PID=${PID[$first]}
GW_URL=${URL[$first]}

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

MEDIA=${GW_URL%/users/42}/media
CURL=(curl -s -S -H "$AUTH" -o /dev/null -w '%{http_code} %{size_download}B down %{size_upload}B up')
echo "streaming $TRANSFER through the gateway (slow client: curl --limit-rate $SLOW_RATE):"
transfer "download, full speed" "${CURL[@]}" "$MEDIA/big.bin"
transfer "download, slow client" "${CURL[@]}" --limit-rate "$SLOW_RATE" "$MEDIA/big.bin"
transfer "upload, full speed" "${CURL[@]}" -H 'Expect:' -H 'Content-Type: application/octet-stream' \
  -X POST -T "$WORK/files/big.bin" "$MEDIA/upload"
transfer "upload, slow client" "${CURL[@]}" -H 'Expect:' -H 'Content-Type: application/octet-stream' \
  --limit-rate "$SLOW_RATE" -X POST -T "$WORK/files/big.bin" "$MEDIA/upload"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
