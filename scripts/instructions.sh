#!/usr/bin/env bash
# Instructions per request in the error storm, the example gateway --bare vs with the layer, and
# nginx to the same closed port for scale, counted by callgrind: figures that do not move with the
# machine's load, unlike req/s.
#
#   scripts/instructions.sh                  # 8 s of wrk per side
#   SECONDS_PER_SIDE=20 scripts/instructions.sh
#   CASE=happy scripts/instructions.sh       # successful requests instead: an nginx origin that
#                                            # sends BODY_BYTES (default 3), and a third side with
#                                            # the layer's read timeout off (the body clock's cost),
#                                            # a fourth with --floor (the bare proxy plus the field
#                                            # walk and CDN-Loop that every default request costs);
#                                            # then what the layer adds, by function (ROWS=20)
#   CONNECTIONS=1 CASE=happy scripts/instructions.sh
#                                            # one request at a time (wrk -c1; 8 by default): no
#                                            # batching of requests per wake-up, so that a side's
#                                            # count repeats within about 50 per request, where with
#                                            # 8 it moves by up to 400 with the machine's load: the
#                                            # figure to compare two versions of the code by
#   METRICS=1 scripts/instructions.sh        # also the layer recording metrics (--features metrics)
#   KEEP_PROFILES=DIR scripts/instructions.sh   # keeps the callgrind profiles in DIR
#   VALGRIND_ARGS=--dump-instr=yes KEEP_PROFILES=DIR scripts/instructions.sh
#                                            # counts by instruction too (callgrind_annotate
#                                            # --auto=no, or the profile's addresses by objdump)
#   BREAKER=1 scripts/instructions.sh        # also the gateway --breaker-failures 5: in the storm it
#                                            # is marked unavailable by the warm-up and refuses every
#                                            # request (503, no connection); with CASE=happy, closed
#
# Counts user-space instructions only. The kernel's share of a request to a closed port (socket,
# connect, epoll, close, the response write) is the same for both sides: they make the same
# system calls per request.
#
# Installs valgrind, wrk and nginx from Debian when missing. Everything listens on 127.0.0.1, and the
# upstream is a closed loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_SIDE=${SECONDS_PER_SIDE:-8}
CONNECTIONS=${CONNECTIONS:-8}
ACCEPT=${ACCEPT:-'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8'}

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "installing $2 from Debian..." >&2
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
}
need valgrind valgrind
need wrk wrk
need nginx nginx-light
need python3 python3

echo "building the gateway (release)..." >&2
cargo build --release --quiet --example gateway ${METRICS:+--features metrics}

WORK=$(mktemp -d)
GATEWAY_PID=
cleanup() {
  if [ -n "$GATEWAY_PID" ]; then kill -9 "$GATEWAY_PID" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  # KEEP_PROFILES=DIR keeps the callgrind profiles there, for callgrind_annotate --tree=caller.
  if [ -n "${KEEP_PROFILES:-}" ]; then mkdir -p "$KEEP_PROFILES"; cp "$WORK"/*.out.1 "$KEEP_PROFILES"/ 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

CLOSED=$(free_port) # nothing listens here: every connect is refused
CASE=${CASE:-storm}
BODY_BYTES=${BODY_BYTES:-3}

# TERM, then KILL after 5 s: nginx under valgrind may not act on TERM, and the run must end.
stop() { # pid
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    if ! kill -0 "$1" 2>/dev/null; then break; fi
    sleep 0.1
  done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Runs one side under callgrind; prints "requests instructions", and keeps the profile.
count() { # name, port, command...
  local name=$1 port=$2; shift 2
  # shellcheck disable=SC2086 # VALGRIND_ARGS is a list of options
  RUST_LOG=off TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no ${VALGRIND_ARGS:-} \
    --callgrind-out-file="$WORK/$name.out" "$@" >/dev/null 2>"$WORK/$name.log" &
  GATEWAY_PID=$!
  for _ in $(seq 1 200); do
    if curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then break; fi
    sleep 0.1
  done
  # Warm up (connections, the rendered body), then count a measured window only.
  wrk -t1 -c"$CONNECTIONS" -d2s -H "Accept: $ACCEPT" "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -i on "$GATEWAY_PID" >/dev/null 2>&1
  local out
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_SIDE}s" -H "Accept: $ACCEPT" "http://127.0.0.1:$port/")
  callgrind_control -i off "$GATEWAY_PID" >/dev/null 2>&1
  callgrind_control -d "$GATEWAY_PID" >/dev/null 2>&1
  stop "$GATEWAY_PID"; GATEWAY_PID=
  local requests total
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  total=$(callgrind_annotate "$WORK/$name.out".1 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  echo "$requests $total"
}

if [ "$CASE" = happy ]; then
  # An origin outside valgrind: only the gateway's instructions are counted.
  ORIGIN=$(free_port)
  mkdir -p "$WORK/origin"
  head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x' >"$WORK/origin/body"
  chmod 755 "$WORK" "$WORK/origin"; chmod 644 "$WORK/origin/body"
  cat >"$WORK/origin/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/origin/nginx.pid;
error_log /dev/null crit;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$ORIGIN; root $WORK/origin; location / { try_files /body =404; } }
}
CONF
  nginx -p "$WORK/origin" -c "$WORK/origin/nginx.conf" &
  ORIGIN_PID=$!
  trap 'kill $ORIGIN_PID 2>/dev/null || true; cleanup' EXIT
  for _ in $(seq 1 100); do
    got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$ORIGIN/" || true)
    [ "$got" = "200 $BODY_BYTES" ] && break
    sleep 0.1
  done
  [ "$got" = "200 $BODY_BYTES" ] || { echo "the origin answered $got, not 200 with $BODY_BYTES bytes" >&2; exit 1; }
  GATEWAY=(target/release/examples/gateway --upstream "http://127.0.0.1:$ORIGIN" --timeout 5s)
  port=$(free_port)
  read -r bare_requests bare_total < <(count bare "$port" "${GATEWAY[@]}" --listen "127.0.0.1:$port" --bare)
  port=$(free_port)
  read -r timed_requests timed_total < <(count timed "$port" "${GATEWAY[@]}" --listen "127.0.0.1:$port")
  port=$(free_port)
  read -r untimed_requests untimed_total < <(count untimed "$port" "${GATEWAY[@]}" --listen "127.0.0.1:$port" --read-timeout off)
  port=$(free_port)
  read -r floor_requests floor_total < <(count floor "$port" "${GATEWAY[@]}" --listen "127.0.0.1:$port" --floor)
  if [ -n "${BREAKER:-}" ]; then
    port=$(free_port)
    read -r breaker_requests breaker_total < <(count breaker "$port" "${GATEWAY[@]}" --listen "127.0.0.1:$port" --breaker-failures 5)
    export BREAKER_SIDE="$breaker_requests $breaker_total"
  fi
  export WORK
  python3 - "$BODY_BYTES" "$bare_requests" "$bare_total" "$timed_requests" "$timed_total" \
    "$untimed_requests" "$untimed_total" "$floor_requests" "$floor_total" <<'EOF2'
import os, sys
size, br, bt, tr, tt, ur, ut, fr, ft = map(int, sys.argv[1:])
bare, timed, untimed, floor = bt / br, tt / tr, ut / ur, ft / fr
print(f"instructions per successful request, {size}-byte body (user space, callgrind; {br}, {tr}, {ur} and {fr} requests)")
print("| side | instructions/request |\n|---|---|")
print(f"| bare | {bare:,.0f} |")
print(f"| bare + the layer's fixed work (`--floor`: the field walk, `CDN-Loop`) | {floor:,.0f} ({(floor / bare - 1) * 100:+.1f}%) |")
print(f"| layered, read timeout off | {untimed:,.0f} ({(untimed / bare - 1) * 100:+.1f}%) |")
print(f"| layered, read timeout on (the default) | {timed:,.0f} ({(timed / bare - 1) * 100:+.1f}%) |")
print(f"| the body clock alone | {timed - untimed:+,.0f} |")
print(f"| the layer's own machinery (defaults - floor) | {timed - floor:+,.0f} ({(timed - floor) / bare * 100:+.1f}% of bare) |")
sys.path.insert(0, "scripts")
from callgrind_functions import changes, functions, show
work = os.environ["WORK"]
# What the layer (defaults) adds to the bare proxy, function by function: the table to check a
# change of the success path against.
print("\nlargest increases per request, layered (defaults) vs bare, by function:")
show(changes(functions(f"{work}/bare.out.1", br), functions(f"{work}/timed.out.1", tr))[:int(os.environ.get("ROWS", "20"))])
side = os.environ.get("BREAKER_SIDE")
if side:
    kr, kt = map(int, side.split())
    breaker = kt / kr
    print(f"| layered + --breaker-failures 5 (closed) | {breaker:,.0f} ({(breaker / bare - 1) * 100:+.1f}%) |")
    print(f"| the breaker alone (vs read timeout on) | {breaker - timed:+,.0f} |")
    print("\nlargest increases per request with the breaker, by function:")
    show(changes(functions(f"{work}/timed.out.1", tr), functions(f"{work}/breaker.out.1", kr))[:12])
EOF2
  exit 0
fi

GATEWAY=(target/release/examples/gateway --upstream "http://127.0.0.1:$CLOSED" --timeout 5s)
port=$(free_port)
read -r bare_requests bare_total < <(count bare "$port" "${GATEWAY[@]}" --listen "127.0.0.1:$port" --bare)
port=$(free_port)
read -r layered_requests layered_total < <(count layered "$port" "${GATEWAY[@]}" --listen "127.0.0.1:$port")
if [ -n "${METRICS:-}" ]; then
  port=$(free_port)
  read -r metered_requests metered_total < <(count metered "$port" "${GATEWAY[@]}" --listen "127.0.0.1:$port" --metrics)
  export METERED="$metered_requests $metered_total"
fi
if [ -n "${BREAKER:-}" ]; then
  # The warm-up's first five refused connects mark the upstream unavailable for 300 s (at least
  # 270 with the jitter): every counted request is a refusal.
  port=$(free_port)
  read -r open_requests open_total < <(count open "$port" "${GATEWAY[@]}" --listen "127.0.0.1:$port" --breaker-failures 5 --breaker-open 300s)
  export OPEN_SIDE="$open_requests $open_total"
fi

# nginx with one worker process and no master, so that callgrind follows the process that serves.
port=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log /dev/null crit;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$port; location / { proxy_pass http://127.0.0.1:$CLOSED; } }
}
CONF
read -r nginx_requests nginx_total < <(count nginx "$port" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf")

python3 - "$WORK" "$bare_requests" "$bare_total" "$layered_requests" "$layered_total" \
  "$nginx_requests" "$nginx_total" <<'EOF'
import os, sys
sys.path.insert(0, "scripts")
from callgrind_functions import changes, functions as profile, show
work, br, bt, lr, lt, nr, nt = sys.argv[1], *map(int, sys.argv[2:])
bare, layered, nginx = bt / br, lt / lr, nt / nr
print(f"instructions per request (user space, callgrind; {br}, {lr} and {nr} requests)")
print(f"| side | instructions/request |\n|---|---|")
print(f"| bare (empty 502) | {bare:,.0f} |")
print(f"| layered (negotiated HTML page) | {layered:,.0f} |")
print(f"| added by the layer | {layered - bare:,.0f} ({(layered / bare - 1) * 100:.1f}%) |")
print(f"| nginx, 1 worker (its own 502 page) | {nginx:,.0f} |")
metered = os.environ.get("METERED")
if metered:
    mr, mt = map(int, metered.split())
    print(f"| layered + metrics | {mt / mr:,.0f} |")
    print(f"| added by recording metrics | {mt / mr - layered:,.0f} ({(mt / mr / layered - 1) * 100:.1f}%) |")
open_side = os.environ.get("OPEN_SIDE")
if open_side:
    orq, ot = map(int, open_side.split())
    print(f"| layered + breaker open (503, no connection) | {ot / orq:,.0f} ({ot / orq / bare:.2f}x bare, {ot / orq / nginx:.2f}x nginx) |")

def functions(name, requests):
    return profile(f"{work}/{name}.out.1", requests)

b, l = functions("bare", br), functions("layered", lr)
print("\nlargest increases per request, by function:")
show(changes(b, l)[:12])

if open_side:
    diff = changes(l, functions("open", orq))
    print("\nthe breaker open vs layered (each a generated error): the largest savings, then additions, per request:")
    show(diff[-8:][::-1] + diff[:8][::-1])

if metered:
    print("\nlargest increases per request by recording metrics, by function:")
    show(changes(l, functions("metered", mr))[:12])
EOF
