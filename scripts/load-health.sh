#!/usr/bin/env bash
# Load runs for the upstream health layer (BENCHMARKS.md, "Outages"): the example gateway with the
# upstream marked unavailable (--breaker-failures) against nginx and against the same gateway
# --bare, all to the same closed port; then p99 latency against an upstream that never answers,
# with and without the breaker.
#
#   scripts/load-health.sh                      # defaults: 9 rounds of 5 s per side
#   ROUNDS=15 DURATION=10 scripts/load-health.sh
#
# Paired rounds, as scripts/load.sh: each round runs the sides back to back in an order that
# rotates, and the verdicts use the median of the per-round ratios. An A/A pair (two identical
# gateways with the breaker open) shows what the machine's noise alone does to a ratio.
#
# wrk shares the cores with the servers, so each side's req/s also pays for wrk. The CPU time each
# server spends per request (user + system, from /proc, over the same wrk runs) is printed too:
# it is what the server itself costs, whatever the load generator's share.
#
# Installs nginx and wrk from Debian when missing. Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-9}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}
WORKERS=${WORKERS:-2}
SILENT_TIMEOUT=${SILENT_TIMEOUT:-500ms}
BROWSER_ACCEPT='text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8'

need nginx nginx-light
need wrk wrk
need python3 python3
need curl curl

echo "building the examples (release)..." >&2
cargo build --release --quiet --example gateway --example upstream

# Sends requests until the gateway on `port` answers 503 destination_unavailable (it takes the
# breaker's five failures); fails if it never does.
# CPU clock ticks (user + system) used so far by the processes given.
ticks() { # pids...
  local total=0 pid
  for pid in "$@"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
  echo "$total"
}
HZ=$(getconf CLK_TCK)
# CPU clock ticks the whole machine has been busy (every process, and interrupts).
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

trip() { # port, path
  for _ in $(seq 1 20); do
    local status
    status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1$2")
    if [ "$status" = 503 ]; then return 0; fi
  done
  echo "the gateway on $1 never marked its upstream unavailable" >&2; exit 1
}

# --- the storm: every side to the same closed port -------------------------------------------
CLOSED=$(free_port)   # nothing listens here: every connect is refused
NGINX=$(free_port)
start_nginx storm "server { listen 127.0.0.1:$NGINX; location / { proxy_pass http://127.0.0.1:$CLOSED; } }"
wait_for "$NGINX"
NGINX_PIDS=$(pgrep -P "${PIDS[-1]}" | tr '\n' ' ')
BARE=$(free_port);  start_gateway "$BARE" "http://127.0.0.1:$CLOSED" --timeout 5s --bare
BARE_PID=${PIDS[-1]}
# Unavailable for 300 s (at least 270 with the jitter), longer than the run, and within the
# delays whose answers are kept (every Retry-After of the run is a kept answer).
OPEN=$(free_port);  start_gateway "$OPEN" "http://127.0.0.1:$CLOSED" --timeout 5s --breaker-failures 5 --breaker-open 300s
OPEN_PID=${PIDS[-1]}
OPEN2=$(free_port); start_gateway "$OPEN2" "http://127.0.0.1:$CLOSED" --timeout 5s --breaker-failures 5 --breaker-open 300s
OPEN2_PID=${PIDS[-1]}
trip "$OPEN" /; trip "$OPEN2" /

# What the storm is: a refusal with the negotiated page, no connection.
curl -s -o "$WORK/open.html" -D "$WORK/open.head" -H "Accept: $BROWSER_ACCEPT" "http://127.0.0.1:$OPEN/"
open_status=$(awk 'NR==1 {print $2}' "$WORK/open.head")
open_retry=$(awk -F': ' 'tolower($1)=="retry-after" {print $2}' "$WORK/open.head" | tr -d '\r')
open_proxy_status=$(awk -F': ' 'tolower($1)=="proxy-status" {print $2}' "$WORK/open.head" | tr -d '\r')
open_size=$(wc -c <"$WORK/open.html")

echo "machine: $(nproc) cores; wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s; $ROUNDS rounds; $WORKERS workers" >&2
declare -A RPS LAST PAIRED P99 CPU LASTCPU ALL
sides=(open nginx bare open2)
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order, so that no side always runs first on a cooler machine.
  shift_by=$(( (round - 1) % ${#sides[@]} ))
  order=("${sides[@]:$shift_by}" "${sides[@]:0:$shift_by}")
  for side in "${order[@]}"; do
    case $side in
      open) port=$OPEN; pids=$OPEN_PID;; open2) port=$OPEN2; pids=$OPEN2_PID;;
      bare) port=$BARE; pids=$BARE_PID;; nginx) port=$NGINX; pids=$NGINX_PIDS;;
    esac
    # shellcheck disable=SC2086
    before=$(ticks $pids); all_before=$(busy)
    read -r rps p99 < <(run_wrk "http://127.0.0.1:$port/" "$BROWSER_ACCEPT")
    # shellcheck disable=SC2086
    used=$(( $(ticks $pids) - before )); all_used=$(( $(busy) - all_before ))
    # Microseconds of CPU per request: the server's, and the whole machine's (wrk included).
    per_request() { python3 -c "import sys; print(round(int(sys.argv[1]) / int(sys.argv[2]) / (float(sys.argv[3]) * int(sys.argv[4])) * 1e6, 2))" "$1" "$HZ" "$rps" "$DURATION"; }
    cpu=$(per_request "$used"); all=$(per_request "$all_used")
    RPS[$side]+="$rps "; P99[$side]+="$p99 "; CPU[$side]+="$cpu "; ALL[$side]+="$all "
    LAST[$side]=$rps; LASTCPU[$side]=$cpu
    echo "round $round storm $side: $rps req/s, p99 $p99 ms, CPU per request: server $cpu us, machine $all us" >&2
  done
  PAIRED[open_nginx]+="$(ratio "${LAST[open]}" "${LAST[nginx]}") "
  PAIRED[open_bare]+="$(ratio "${LAST[open]}" "${LAST[bare]}") "
  PAIRED[bare_nginx]+="$(ratio "${LAST[bare]}" "${LAST[nginx]}") "
  PAIRED[aa]+="$(ratio "${LAST[open2]}" "${LAST[open]}") "
  PAIRED[cpu_nginx_open]+="$(ratio "${LASTCPU[nginx]}" "${LASTCPU[open]}") "
done
# Still unavailable at the end: the run measured refusals only.
end_status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$OPEN/")

# --- an upstream that never answers ----------------------------------------------------------
SILENT=$(free_port)
"$TARGET/release/examples/upstream" --listen "127.0.0.1:$SILENT" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_for "$SILENT"
SLOW_OPEN=$(free_port)
start_gateway "$SLOW_OPEN" "http://127.0.0.1:$SILENT" --timeout "$SILENT_TIMEOUT" --breaker-failures 5 --breaker-open 300s
SLOW_PLAIN=$(free_port)
start_gateway "$SLOW_PLAIN" "http://127.0.0.1:$SILENT" --timeout "$SILENT_TIMEOUT"
started=$(date +%s.%N)
trip "$SLOW_OPEN" /slow
tripped_in=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$started" "$(date +%s.%N)")
read -r slow_open_rps slow_open_p99 < <(run_wrk "http://127.0.0.1:$SLOW_OPEN/slow" "$BROWSER_ACCEPT")
read -r slow_plain_rps slow_plain_p99 < <(run_wrk "http://127.0.0.1:$SLOW_PLAIN/slow" "$BROWSER_ACCEPT")
slow_status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SLOW_OPEN/slow")

# --- table -----------------------------------------------------------------------------------
on=$(median ${PAIRED[open_nginx]}); ob=$(median ${PAIRED[open_bare]})
cat <<EOF

| measurement | value | target | |
|---|---|---|---|
| storm req/s, breaker open / nginx (same closed port, $WORKERS workers each): median of $ROUNDS paired ratios (rounds' range) | **$on** ($(spread ${PAIRED[open_nginx]})); medians $(median ${RPS[open]}) / $(median ${RPS[nginx]}) | ≥ 2.0 | $(verdict "$on" ">=" 2.0) |
| storm req/s, breaker open / --bare | **$ob** ($(spread ${PAIRED[open_bare]})); median of --bare $(median ${RPS[bare]}) | ≥ 1.5 | $(verdict "$ob" ">=" 1.5) |
| storm req/s, --bare / nginx: the proxy stack with a connect per request | $(median ${PAIRED[bare_nginx]}) ($(spread ${PAIRED[bare_nginx]})) | | |
| noise check: a second breaker-open gateway / the first (should be 1) | $(median ${PAIRED[aa]}) ($(spread ${PAIRED[aa]})) | | |
| storm p99 latency: breaker open / --bare / nginx | $(median ${P99[open]}) / $(median ${P99[bare]}) / $(median ${P99[nginx]}) ms | | |
| server CPU per request (user + system): breaker open / --bare / nginx | $(median ${CPU[open]}) / $(median ${CPU[bare]}) / $(median ${CPU[nginx]}) µs | | |
| server CPU per request, nginx / breaker open: median of paired ratios | **$(median ${PAIRED[cpu_nginx_open]})** ($(spread ${PAIRED[cpu_nginx_open]})) | | |
| the whole machine's CPU per request (servers, wrk, interrupts): breaker open / --bare / nginx | $(median ${ALL[open]}) / $(median ${ALL[bare]}) / $(median ${ALL[nginx]}) µs | | |
| the breaker-open answer | $open_status, \`Proxy-Status: $open_proxy_status\`, \`Retry-After: $open_retry\`, $open_size-byte HTML page; still $end_status after the run | 503 destination_unavailable | |
| never-answering upstream, timeout $SILENT_TIMEOUT: marked unavailable after | five requests, ${tripped_in} s | | |
| never-answering upstream: p99 latency, breaker open | **$slow_open_p99 ms** ($slow_open_rps req/s, answered $slow_status) | well under the timeout | |
| never-answering upstream: p99 latency, no breaker | $slow_plain_p99 ms ($slow_plain_rps req/s: every request waits for the timeout) | | |
EOF
