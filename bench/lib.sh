# Shared by the HTTP benchmarks (sourced; needs ROOT and PY set): a work directory removed on
# exit, free ports, the nginx upstream stub, a redis-server, the environment of the gateway and
# of the Node reference (bench/node_ref/), how to start either, and a valid access token.

bench_workdir() {  # WORK: a temporary directory; PIDS: processes stopped on exit
  WORK=$(mktemp -d /tmp/gw-bench.XXXXXX)
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {  # port [tries of 0.1 s]
  for _ in $(seq "${2:-100}"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sys_ticks() { awk '{print $15}' "/proc/$1/stat"; }  # the kernel's part (syscalls)

# nginx (one worker) on NGINX_PORT: GET /users/* answers a small JSON body with keep-alive;
# /media/big.bin is a sparse file of $1 bytes; POST /media/upload reads and drops any body.
# Every request writes "$connection $connection_requests" to $WORK/conn.log: a line whose
# request count is 1 is a new upstream connection.
start_nginx_stub() {
  NGINX_PORT=$(free_port)
  mkdir -p "$WORK/files" "$WORK/tmp"
  truncate -s "${1:-1M}" "$WORK/files/big.bin"   # sparse: costs no disk
  chmod 755 "$WORK" "$WORK/files"; chmod 644 "$WORK/files/big.bin"  # nginx workers may run as nobody
  cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
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
}

SECRET=bench-access-secret-0123456789abcdef0123456789
REFRESH_SECRET=bench-refresh-secret-0123456789abcdef012345
ORIGIN=http://bench.example

# A redis-server of the benchmark's own on a free port (never the machine's 6379), for the
# rate limits of the gateway and the Node reference; sets BENCH_REDIS_URL unless given.
start_redis() {
  [[ -n ${BENCH_REDIS_URL:-} ]] && return 0
  command -v redis-server >/dev/null || { echo "missing: redis-server" >&2; exit 2; }
  REDIS_BENCH_PORT=$(free_port)
  mkdir -p "$WORK/redis"
  redis-server --port "$REDIS_BENCH_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK/redis" --loglevel warning >"$WORK/redis.out" 2>&1 &
  PIDS+=($!)
  wait_port "$REDIS_BENCH_PORT"
  BENCH_REDIS_URL=redis://127.0.0.1:$REDIS_BENCH_PORT/0
}

# The Node reference gateway's packages (bench/node_ref/package-lock.json), installed once.
install_node_ref() {
  local dir=$ROOT/bench/node_ref
  command -v npm >/dev/null || { echo "missing: npm (apt-get install nodejs npm)" >&2; exit 2; }
  if [[ ! -d $dir/node_modules || $dir/package-lock.json -nt $dir/node_modules ]]; then
    (cd "$dir" && npm ci --no-audit --no-fund --silent) >&2
    touch "$dir/node_modules"
  fi
}

# gateway_env PORT [LOG_LEVEL] [limits: 1|0]: export the settings shared by the gateway and
# the Node reference. Defaults: the production configuration (NODE_ENV=production, access
# log at info, rate limits in Redis, limits so high that nothing is refused).
gateway_env() {
  local limits=${3:-${BENCH_RATE_LIMIT:-1}}
  export NODE_ENV=${BENCH_NODE_ENV:-production} HOST=127.0.0.1 PORT=$1 INTERNAL_PORT=0 \
    LOG_LEVEL=${2:-${BENCH_LOG_LEVEL:-info}} ALLOWED_ORIGINS=$ORIGIN \
    JWT_ACCESS_SECRET=$SECRET JWT_REFRESH_SECRET=$REFRESH_SECRET \
    REDIS_URL=$([[ $limits == 1 ]] && echo "${BENCH_REDIS_URL:?start_redis first}" || echo "${BENCH_REDIS_URL:-memory://}") \
    RATE_LIMIT_ENABLED=$([[ $limits == 1 ]] && echo true || echo false) \
    RATE_LIMIT_USER=1000000000/60 RATE_LIMIT_IP=1000000000/60 \
    USERS_SERVICE_URL=http://127.0.0.1:$NGINX_PORT/users \
    MEDIA_SERVICE_URL=http://127.0.0.1:$NGINX_PORT/media \
    MEDIA_MAX_BODY_SIZE=$((1 << 40)) UPSTREAM_TIMEOUT=600 UPSTREAM_CONNECT_TIMEOUT=30 \
    CIRCUIT_FAILURES=1000000  # a slow start under callgrind must not open the circuit
}

# start_target SPEC: SPEC is gateway[:LEVEL[:nolimits]], node[:LEVEL[:nolimits]] or upstream.
# Sets T_PID, T_URL (the authenticated GET it answers) and T_LOG.
start_target() {
  local kind level limits port
  IFS=: read -r kind level limits <<<"$1"
  limits=$([[ $limits == nolimits ]] && echo 0 || echo "${BENCH_RATE_LIMIT:-1}")
  T_LOG=$WORK/${1//:/_}.log
  if [[ $kind == upstream ]]; then
    T_PID=$(cat "$WORK/nginx.pid"); T_URL=http://127.0.0.1:$NGINX_PORT/users/42; return 0
  fi
  port=$(free_port)
  (
    gateway_env "$port" "$level" "$limits"
    cd "$ROOT"
    case $kind in
      gateway) exec "$PY" -m tornado_gateway ;;
      node) exec node bench/node_ref/server.js ;;
      *) echo "unknown target $kind" >&2; exit 2 ;;
    esac
  ) >"$T_LOG" 2>&1 &
  T_PID=$!
  PIDS+=("$T_PID")
  wait_port "$port"
  T_URL=http://127.0.0.1:$port/api/users/42
}

bench_token() {  # an access token valid for an hour, signed with the gateway's secret
  "$PY" -c 'import jwt,sys,time; print(jwt.encode({"sub":"bench-user","iat":int(time.time()),"exp":int(time.time())+3600}, sys.argv[1], algorithm="HS256"))' "$SECRET"
}
