#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: steady from run to run
# (CPU time on a shared VM swings by 10-20 %), so two versions of the code can be compared.
# Usage: bash bench/instructions.sh [REQUESTS] [CONNECTIONS]     (default 2000 over 64)
#   Production configuration by default (NODE_ENV=production, access log at info, rate limits
#   in a redis-server of its own); BENCH_LOG_LEVEL=warning / BENCH_RATE_LIMIT=0 for the others.
# The gateway runs twice under callgrind, answering C and C+REQUESTS GETs of /api/users/42
# (nginx upstream stub); the difference of the two totals over REQUESTS is the figure, so
# start-up and shut-down cancel out. Needs valgrind (apt-get install valgrind) and nginx.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
REQUESTS=${1:-2000}
CONNECTIONS=${2:-64}
for tool in valgrind nginx; do
  command -v "$tool" >/dev/null || { echo "missing: $tool; install with: sudo apt-get install -y $tool" >&2; exit 2; }
done
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_workdir
start_nginx_stub
[[ ${BENCH_RATE_LIMIT:-1} == 1 ]] && start_redis
TOKEN=$(bench_token)

count() {  # requests -> "instructions answered"
  local port out
  port=$(free_port)
  out="$WORK/callgrind.$1"
  gateway_env "$port"
  (cd "$ROOT" && PYTHONHASHSEED=0 exec valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$PY" -m tornado_gateway) >"$WORK/gateway.$1.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")  # stopped on exit even when this run fails
  wait_port "$port" 3000  # valgrind starts slowly, slower still on a busy machine
  local answered
  answered=$("$PY" "$ROOT/bench/keepalive_get.py" "$port" "$1" "$CONNECTIONS" /api/users/42 "$TOKEN")
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  echo "$(awk '/^summary:/ {s += $2} END {print s}' "$out"*) $answered"
}

read -r base base_ok < <(count "$CONNECTIONS")
read -r full full_ok < <(count $((CONNECTIONS + REQUESTS)))
echo "NODE_ENV=${BENCH_NODE_ENV:-production} LOG_LEVEL=${BENCH_LOG_LEVEL:-info} rate limiting $([[ ${BENCH_RATE_LIMIT:-1} == 1 ]] && echo "ON (${BENCH_REDIS_URL})" || echo off)"
echo "instructions per proxied request: $(( (full - base) / (full_ok - base_ok) )) ($((full_ok - base_ok)) requests over $CONNECTIONS connections)"
