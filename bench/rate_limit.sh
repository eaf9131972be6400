#!/usr/bin/env bash
# Cost of cluster-wide rate limiting: bench/http.sh with the gateway twice, limits off and on
# (limits too high to refuse), alternated in one run, both with the same Redis configured,
# so the only difference is the limiter's EVALSHA.
# Usage: bash bench/rate_limit.sh [ROUNDS]      (BENCH_DURATION etc. as in http.sh)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_TARGETS="gateway:${BENCH_LOG_LEVEL:-info}:nolimits gateway:${BENCH_LOG_LEVEL:-info}" \
  BENCH_ROUNDS=${1:-2} BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64} BENCH_SKIP_TRANSFERS=1 \
  exec bash "$ROOT/bench/http.sh"
