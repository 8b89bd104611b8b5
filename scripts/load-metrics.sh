#!/usr/bin/env bash
# What recording metrics costs under load: the example gateway with the layer, with and without
# `--metrics` (built with `--features metrics`, so both sides run the same binary), side by side on
# loopback, in paired rounds. Prints each round and the median of the per-round ratios.
#
#   scripts/load-metrics.sh                       # defaults: 6 rounds of 3 s per side
#   ROUNDS=15 DURATION=5 scripts/load-metrics.sh  # longer
#
# As in scripts/load.sh, each round runs the sides back to back in an order that alternates, and a
# second gateway without metrics gives an A/A ratio: what this machine's noise alone does to a
# ratio that should be 1. Installs wrk from Debian when missing. Everything is on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-6}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}
WORKERS=${WORKERS:-2}
BROWSER_ACCEPT='text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8'

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk from Debian..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

echo "building the examples (release, --features metrics)..." >&2
cargo build --release --quiet --features metrics --example gateway --example upstream
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

start_gateway() { # port, upstream url, extra args...
  local port=$1 upstream=$2; shift 2
  RUST_LOG=off TOKIO_WORKER_THREADS=$WORKERS \
    "$TARGET/release/examples/gateway" --listen "127.0.0.1:$port" --upstream "$upstream" "$@" \
    >"$WORK/gateway-$port.log" 2>&1 &
  PIDS+=($!)
  wait_for "$port"
}

run_wrk() { # url; prints requests per second
  wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -H "Accept: $BROWSER_ACCEPT" "$1" 2>&1 |
    python3 -c '
import re, sys
text = sys.stdin.read()
errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
if errors and sum(map(int, errors.groups())) > 0:
    print("wrk socket errors: " + errors.group(0), file=sys.stderr)
print(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
'
}

median() { python3 -c 'import statistics,sys; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.3f}")' "$@"; }
spread() { python3 -c 'import sys; v=[float(x) for x in sys.argv[1:]]; print(f"{min(v):.2f} to {max(v):.2f}")' "$@"; }
ratio() { python3 -c 'import sys; print(f"{float(sys.argv[1])/float(sys.argv[2]):.3f}")' "$1" "$2"; }

ORIGIN=$(free_port)
"$TARGET/release/examples/upstream" --listen "127.0.0.1:$ORIGIN" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_for "$ORIGIN"
CLOSED=$(free_port) # nothing listens here: every connect is refused

HAPPY_OFF=$(free_port);  start_gateway "$HAPPY_OFF" "http://127.0.0.1:$ORIGIN"
HAPPY_ON=$(free_port);   start_gateway "$HAPPY_ON" "http://127.0.0.1:$ORIGIN" --metrics
STORM_OFF=$(free_port);  start_gateway "$STORM_OFF" "http://127.0.0.1:$CLOSED"
STORM_ON=$(free_port);   start_gateway "$STORM_ON" "http://127.0.0.1:$CLOSED" --metrics
STORM_OFF2=$(free_port); start_gateway "$STORM_OFF2" "http://127.0.0.1:$CLOSED"

echo "machine: $(nproc) cores; wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s; $ROUNDS rounds; $WORKERS workers" >&2

declare -A LAST PAIRED
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="off on"; else order="on off"; fi
  for side in $order; do
    if [ "$side" = off ]; then port=$HAPPY_OFF; else port=$HAPPY_ON; fi
    LAST[$side]=$(run_wrk "http://127.0.0.1:$port/ok")
    echo "round $round happy metrics $side: ${LAST[$side]} req/s" >&2
  done
  PAIRED[happy]+="$(ratio "${LAST[on]}" "${LAST[off]}") "
  for side in $order off2; do
    case $side in off) port=$STORM_OFF;; on) port=$STORM_ON;; off2) port=$STORM_OFF2;; esac
    LAST[$side]=$(run_wrk "http://127.0.0.1:$port/")
    echo "round $round storm metrics $side: ${LAST[$side]} req/s" >&2
  done
  PAIRED[storm]+="$(ratio "${LAST[on]}" "${LAST[off]}") "
  PAIRED[storm_aa]+="$(ratio "${LAST[off2]}" "${LAST[off]}") "
done

# The metrics gateways really recorded: their exporters print on shutdown.
for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
sleep 1
recorded=$(grep -l 'gateway.errors.generated' "$WORK"/gateway-"$STORM_ON".log >/dev/null && echo yes || echo no)

cat <<EOF

| measurement | median of $ROUNDS paired ratios (rounds' range) |
|---|---|
| happy path req/s, --metrics / without | **$(median ${PAIRED[happy]})** ($(spread ${PAIRED[happy]})) |
| error storm req/s, --metrics / without | **$(median ${PAIRED[storm]})** ($(spread ${PAIRED[storm]})) |
| noise check: a second gateway without metrics / without (should be 1) | **$(median ${PAIRED[storm_aa]})** ($(spread ${PAIRED[storm_aa]})) |
| the storm gateway with --metrics exported gateway.errors.generated on exit | $recorded |
EOF
