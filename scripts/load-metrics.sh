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
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-6}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}
WORKERS=${WORKERS:-2}
BROWSER_ACCEPT='text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8'

need wrk wrk
need python3 python3

echo "building the examples (release, --features metrics)..." >&2
cargo build --release --quiet --features metrics --example gateway --example upstream

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
    read -r "LAST[$side]" _ < <(run_wrk "http://127.0.0.1:$port/ok" "$BROWSER_ACCEPT")
    echo "round $round happy metrics $side: ${LAST[$side]} req/s" >&2
  done
  PAIRED[happy]+="$(ratio "${LAST[on]}" "${LAST[off]}") "
  for side in $order off2; do
    case $side in off) port=$STORM_OFF;; on) port=$STORM_ON;; off2) port=$STORM_OFF2;; esac
    read -r "LAST[$side]" _ < <(run_wrk "http://127.0.0.1:$port/" "$BROWSER_ACCEPT")
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
