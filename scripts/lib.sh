# Shared by the load scripts (scripts/load.sh, scripts/body_timer.sh): installing the tools,
# starting nginx and the example gateway on loopback, running wrk, and the arithmetic of paired
# rounds. Expects DURATION, CONNECTIONS, WRK_THREADS and WORKERS to be set.
#
# PIN=1 gives the load generator and the servers a core each (wrk on CPU 0, every server on
# CPU 1, with `taskset`): the servers then compete for their core alone, and wrk's own cost no
# longer sets the req/s of both sides. Use it with WORKERS=1 and WRK_THREADS=1.
if [ "${PIN:-0}" = 1 ]; then
  LOADGEN=(taskset -c 0)
  SERVER=(taskset -c 1)
else
  LOADGEN=()
  SERVER=()
fi

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "installing $2 from Debian..." >&2
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
}
TARGET=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # port
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listening on 127.0.0.1:$1" >&2; exit 1
}

start_nginx() { # name, server block
  local dir="$WORK/nginx-$1"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $dir/nginx.pid;
error_log /dev/null crit;
daemon off;
events { worker_connections 65536; }
http {
  access_log off;
  keepalive_requests 100000;
  $2
}
EOF
  "${SERVER[@]}" nginx -p "$dir" -c "$dir/nginx.conf" &
  PIDS+=($!)
}

start_gateway() { # port, upstream url, extra args...
  local port=$1 upstream=$2; shift 2
  RUST_LOG=off TOKIO_WORKER_THREADS=$WORKERS \
    "${SERVER[@]}" "$TARGET/release/examples/gateway" --listen "127.0.0.1:$port" --upstream "$upstream" "$@" \
    >"$WORK/gateway-$port.log" 2>&1 &
  PIDS+=($!)
  wait_for "$port"
}

# wrk once; prints "requests_per_second p99_ms"
run_wrk() { # url, accept
  "${LOADGEN[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Accept: $2" "$1" 2>&1 |
    python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
if errors and sum(map(int, errors.groups())) > 0:
    print("wrk socket errors: " + errors.group(0), file=sys.stderr)
print(rps, float(m.group(1)) * scale)
'
}

median() { python3 -c 'import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:]), 3))' "$@"; }
ratio() { python3 -c 'import sys; print(f"{float(sys.argv[1])/float(sys.argv[2]):.3f}")' "$1" "$2"; }

spread() { python3 -c 'import sys; v=[float(x) for x in sys.argv[1:]]; print(f"{min(v):.2f} to {max(v):.2f}")' "$@"; }
verdict() { python3 -c 'import sys; v,op,t=float(sys.argv[1]),sys.argv[2],float(sys.argv[3]); print("met" if (v>=t if op==">=" else v<=t) else "MISSED")' "$@"; }
