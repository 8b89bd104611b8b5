#!/usr/bin/env bash
# What the clock on the origin's body costs on the happy path: the example gateway --bare, with
# the layer (its read timeout on, as by default), and with the layer and `--read-timeout off`,
# side by side on loopback in front of nginx. Two bodies: 3 bytes (one frame), and 1 MiB (many
# frames, each a chance for the timer to be armed and moved).
#
#   scripts/body_timer.sh                       # 7 rounds of 5 s per side and body
#   ROUNDS=11 DURATION=10 scripts/body_timer.sh # longer
#
# Each round runs the three sides back to back in rotating order; the table shows the median of
# the per-round ratios, which the machine's drift moves far less than each side's own median.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-7}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}
WORKERS=${WORKERS:-2}

need nginx nginx-light
need wrk wrk
need python3 python3

echo "building the example gateway (release)..." >&2
cargo build --release --quiet --example gateway

ORIGIN=$(free_port)
head -c $((1024 * 1024)) /dev/zero | tr '\0' 'x' >"$WORK/large"
start_nginx origin "server { listen 127.0.0.1:$ORIGIN; location = / { return 200 'ok\n'; } location = /large { alias $WORK/large; } }"
wait_for "$ORIGIN"
# nginx's workers run as nobody: they must be able to read the file.
chmod 755 "$WORK"; chmod 644 "$WORK/large"

declare -A PORT
PORT[bare]=$(free_port);    start_gateway "${PORT[bare]}" "http://127.0.0.1:$ORIGIN" --timeout 5s --bare
PORT[timed]=$(free_port);   start_gateway "${PORT[timed]}" "http://127.0.0.1:$ORIGIN" --timeout 5s
PORT[untimed]=$(free_port); start_gateway "${PORT[untimed]}" "http://127.0.0.1:$ORIGIN" --timeout 5s --read-timeout off

# Every side must really serve the 1 MiB body, or the numbers measure an error page.
for side in bare timed untimed; do
  got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:${PORT[$side]}/large")
  [ "$got" = "200 1048576" ] || { echo "$side: /large gave $got" >&2; exit 1; }
done

echo "machine: $(nproc) cores; wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s; $ROUNDS rounds; $WORKERS workers" >&2

declare -A RPS LAST PAIRED
SIDES=(bare timed untimed)
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order so that no side always runs first on a fresh minute of the machine.
  shift_by=$((round % 3))
  order=("${SIDES[@]:$shift_by}" "${SIDES[@]:0:$shift_by}")
  for body in small large; do
    path=/; [ "$body" = large ] && path=/large
    for side in "${order[@]}"; do
      read -r rps _p99 < <(run_wrk "http://127.0.0.1:${PORT[$side]}$path" "*/*")
      RPS[${body}_$side]+="$rps "
      LAST[$side]=$rps
      echo "round $round $body $side: $rps req/s" >&2
    done
    PAIRED[${body}_timed]+="$(ratio "${LAST[timed]}" "${LAST[bare]}") "
    PAIRED[${body}_untimed]+="$(ratio "${LAST[untimed]}" "${LAST[bare]}") "
    PAIRED[${body}_clock]+="$(ratio "${LAST[timed]}" "${LAST[untimed]}") "
  done
done

row() { # body, label
  local body=$1 label=$2
  echo "| $label: layered, read timeout on / bare | **$(median ${PAIRED[${body}_timed]})** ($(spread ${PAIRED[${body}_timed]})) | medians $(median ${RPS[${body}_timed]}) / $(median ${RPS[${body}_bare]}) |"
  echo "| $label: layered, read timeout off / bare | **$(median ${PAIRED[${body}_untimed]})** ($(spread ${PAIRED[${body}_untimed]})) | medians $(median ${RPS[${body}_untimed]}) / $(median ${RPS[${body}_bare]}) |"
  echo "| $label: read timeout on / off (the clock alone) | **$(median ${PAIRED[${body}_clock]})** ($(spread ${PAIRED[${body}_clock]})) | |"
}

cat <<EOF

| req/s, median of $ROUNDS paired ratios (rounds' range) | ratio | side medians |
|---|---|---|
$(row small "3-byte body")
$(row large "1 MiB body")
EOF
