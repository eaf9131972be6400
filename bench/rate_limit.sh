#!/usr/bin/env bash
# Cost of cluster-wide rate limiting: bench/http.sh's proxy run with limits off
# and on (limits too high to refuse), alternated in one run, against one
# throw-away redis-server (never the machine's 6379). Both runs have Redis
# configured, so the only difference is the limiter's EVALSHA per request.
# Usage: bash bench/rate_limit.sh [ROUNDS]      (BENCH_DURATION etc. as in http.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
ROUNDS=${1:-2}
command -v redis-server >/dev/null || { echo "missing: redis-server" >&2; exit 2; }
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIR=$(mktemp -d /tmp/gw-bench-redis.XXXXXX)
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" \
  --loglevel warning >/dev/null 2>&1 &
REDIS_PID=$!
trap 'kill $REDIS_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

export BENCH_REDIS_URL=redis://127.0.0.1:$PORT/0 BENCH_SKIP_TRANSFERS=1
export BENCH_DURATION=${BENCH_DURATION:-5s}
for round in $(seq "$ROUNDS"); do
  for limits in 0 1; do
    echo "== round $round, rate limiting $([[ $limits == 1 ]] && echo ON || echo off)"
    BENCH_RATE_LIMIT=$limits bash "$ROOT/bench/http.sh" | grep -E '^(machine:|gateway|nginx) '
  done
done
echo "EVALSHA calls Redis served (all ON runs): $(redis-cli -p "$PORT" info commandstats | grep -o 'cmdstat_evalsha:calls=[0-9]*' || echo none)"
