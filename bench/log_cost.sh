#!/usr/bin/env bash
# Cost of the access log: bench/http.sh with the gateway twice, LOG_LEVEL=info (one access
# line per request) and warning (none), alternated in one run, production configuration
# otherwise; the "CPU - first" column is the log's CPU per request. Then, with
# BENCH_INSTRUCTIONS=1, the same pair counted by bench/instructions.sh (steady figures).
# Usage: bash bench/log_cost.sh [ROUNDS]      (BENCH_DURATION etc. as in http.sh)
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_TARGETS="gateway:warning gateway:info" BENCH_ROUNDS=${1:-3} \
  BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64} BENCH_SKIP_TRANSFERS=1 bash "$ROOT/bench/http.sh"
if [[ ${BENCH_INSTRUCTIONS:-0} == 1 ]]; then
  for level in warning info; do BENCH_LOG_LEVEL=$level bash "$ROOT/bench/instructions.sh" | tail -2; done
fi
