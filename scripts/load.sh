#!/usr/bin/env bash
# Load runs behind BENCHMARKS.md: the example gateway with the layer vs the same gateway --bare,
# and vs nginx, side by side on loopback. Prints a table of the ratios.
#
#   scripts/load.sh                       # defaults: 9 rounds of 5 s per case
#   ROUNDS=15 DURATION=10 scripts/load.sh # longer
#
# A shared or virtual machine drifts by tens of percent from minute to minute. Each round runs the
# sides back to back, in alternating order, and the verdicts use the median of the per-round
# ratios, which that drift moves far less than it moves each side's own median.
#
# Installs nginx and wrk from Debian when they are missing (needs root, as on CI machines).
# Every server listens on 127.0.0.1; wrk and the clients only talk to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

DURATION=${DURATION:-5}       # seconds per wrk run
ROUNDS=${ROUNDS:-9}           # rounds; the table shows the median of the per-round ratios
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}
WORKERS=${WORKERS:-2}         # gateway runtime threads = nginx worker_processes
STALLED=${STALLED:-10000}     # concurrent requests on a silent upstream (over h2c to it: see below)
STALL_TIMEOUT_MS=${STALL_TIMEOUT_MS:-2000}
BROWSER_ACCEPT='text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8'

need nginx nginx-light
need wrk wrk
need python3 python3

# As many open files as the hard limit allows (10,000 stalled clients need a little over 10,000).
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((STALLED + 1000)) ]; then
  echo "the open-file limit $(ulimit -n) is too low for STALLED=$STALLED" >&2; exit 1
fi

echo "building the examples (release)..." >&2
cargo build --release --quiet --example gateway --example upstream --example stall_clients


# --- origins and gateways -------------------------------------------------------------------
ORIGIN=$(free_port)
start_nginx origin "server { listen 127.0.0.1:$ORIGIN; location / { return 200 'ok\n'; } }"
wait_for "$ORIGIN"

CLOSED=$(free_port)   # nothing will listen here: every connect is refused
NGINX_STORM=$(free_port)
start_nginx storm "server { listen 127.0.0.1:$NGINX_STORM; location / { proxy_pass http://127.0.0.1:$CLOSED; } }"
wait_for "$NGINX_STORM"

HAPPY_LAYERED=$(free_port); start_gateway "$HAPPY_LAYERED" "http://127.0.0.1:$ORIGIN" --timeout 5s
HAPPY_BARE=$(free_port);    start_gateway "$HAPPY_BARE" "http://127.0.0.1:$ORIGIN" --timeout 5s --bare
STORM_LAYERED=$(free_port); start_gateway "$STORM_LAYERED" "http://127.0.0.1:$CLOSED" --timeout 5s
STORM_BARE=$(free_port);    start_gateway "$STORM_BARE" "http://127.0.0.1:$CLOSED" --timeout 5s --bare
# A second, identical bare gateway: the A/A pair shows how far this machine's noise alone moves a
# ratio that should be 1.
STORM_BARE2=$(free_port);   start_gateway "$STORM_BARE2" "http://127.0.0.1:$CLOSED" --timeout 5s --bare

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s; $ROUNDS rounds; $WORKERS workers" >&2

declare -A RPS P99 LAST LASTP99 PAIRED
for round in $(seq 1 "$ROUNDS"); do
  # Alternate the order each round so that neither side always runs on a warmer machine.
  if [ $((round % 2)) -eq 1 ]; then order="bare layered"; else order="layered bare"; fi
  for side in $order; do
    if [ "$side" = bare ]; then port=$HAPPY_BARE; else port=$HAPPY_LAYERED; fi
    read -r rps p99 < <(run_wrk "http://127.0.0.1:$port/" "$BROWSER_ACCEPT")
    RPS[happy_$side]+="$rps "; P99[happy_$side]+="$p99 "
    LAST[$side]=$rps; LASTP99[$side]=$p99
    echo "round $round happy $side: $rps req/s, p99 $p99 ms" >&2
  done
  # Paired: the two sides ran one after the other, so a slow minute of the machine hits both.
  PAIRED[happy]+="$(ratio "${LAST[layered]}" "${LAST[bare]}") "
  PAIRED[happy_p99]+="$(ratio "${LASTP99[layered]}" "${LASTP99[bare]}") "
  for side in $order nginx bare2; do
    case $side in
      bare) port=$STORM_BARE;; bare2) port=$STORM_BARE2;;
      layered) port=$STORM_LAYERED;; nginx) port=$NGINX_STORM;;
    esac
    read -r rps p99 < <(run_wrk "http://127.0.0.1:$port/" "$BROWSER_ACCEPT")
    RPS[storm_$side]+="$rps "; P99[storm_$side]+="$p99 "
    LAST[$side]=$rps
    echo "round $round storm $side: $rps req/s, p99 $p99 ms" >&2
  done
  PAIRED[storm]+="$(ratio "${LAST[layered]}" "${LAST[bare]}") "
  PAIRED[storm_nginx]+="$(ratio "${LAST[layered]}" "${LAST[nginx]}") "
  PAIRED[storm_bare_nginx]+="$(ratio "${LAST[bare]}" "${LAST[nginx]}") "
  PAIRED[storm_aa]+="$(ratio "${LAST[bare2]}" "${LAST[bare]}") "
done

# A sanity check that the storm really was generated errors with full bodies.
curl -s -o "$WORK/storm.html" -w '%{http_code} %{content_type} %{size_download}\n' \
  -H "Accept: $BROWSER_ACCEPT" "http://127.0.0.1:$STORM_LAYERED/" >"$WORK/storm.check"
read -r storm_status storm_type storm_size < <(tr -d ';' <"$WORK/storm.check" | awk '{print $1, $2, $NF}')

# --- stalled upstream ----------------------------------------------------------------------
SILENT=$(free_port)
target/release/examples/upstream --listen "127.0.0.1:$SILENT" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_for "$SILENT"
STALL_GATEWAY=$(free_port)
# HTTP/2 to the upstream: over HTTP/1.1 each pending request would hold two descriptors in the
# gateway (client and upstream side), and 10,000 of them need more than the 20,000 open files a
# container may be capped at. With h2c they share one upstream connection.
start_gateway "$STALL_GATEWAY" "http://127.0.0.1:$SILENT" --timeout "${STALL_TIMEOUT_MS}ms" --http2
STALL_PID=${PIDS[-1]}
# Warm the gateway up (runtime threads, pools) before its first memory reading.
curl -s -o /dev/null "http://127.0.0.1:$STALL_GATEWAY/ok"
target/release/examples/stall_clients --target "127.0.0.1:$STALL_GATEWAY" --path /slow \
  --requests "$STALLED" --timeout-ms "$STALL_TIMEOUT_MS" --gateway-pid "$STALL_PID" --rounds 6 >"$WORK/stall.out"
grep -v '=' "$WORK/stall.out" >&2
# shellcheck disable=SC1090
source <(grep '=' "$WORK/stall.out")

# --- table ---------------------------------------------------------------------------------
hb=$(median ${RPS[happy_bare]}); hl=$(median ${RPS[happy_layered]})
hbp=$(median ${P99[happy_bare]}); hlp=$(median ${P99[happy_layered]})
sb=$(median ${RPS[storm_bare]}); sl=$(median ${RPS[storm_layered]}); sn=$(median ${RPS[storm_nginx]})

# The verdicts use the median of the per-round ratios; the medians of each side are shown too.
happy_ratio=$(median ${PAIRED[happy]}); happy_p99=$(median ${PAIRED[happy_p99]})
storm_ratio=$(median ${PAIRED[storm]}); storm_nginx=$(median ${PAIRED[storm_nginx]})
limit_ms=$((STALL_TIMEOUT_MS + 100))
stall_ok=$([ "$stall_answered" -eq "$STALLED" ] && [ "$stall_hung" -eq 0 ] && echo met || echo MISSED)
# Memory "returns" when more identical bursts stop growing the gateway: what stays after the
# first is the allocator keeping freed pages for reuse, not a leak (a leak grows every burst).
# The last three readings within 10% of one another: resident memory wanders by a few percent
# from burst to burst, while a leak of the first burst's size would add over 20% across three.
mem_back=$(python3 -c "v=[$rss_after_round4, $rss_after_round5, $rss_after_round6]; print('met' if max(v) <= min(v) * 1.10 else 'MISSED')")

cat <<EOF

| measurement | value | target | |
|---|---|---|---|
| happy path req/s, layered / bare: median of $ROUNDS paired ratios (rounds' range) | **$happy_ratio** ($(spread ${PAIRED[happy]})); medians $hl / $hb | ≥ 0.98 | $(verdict "$happy_ratio" ">=" 0.98) |
| happy path p99 latency, layered / bare | **$happy_p99** ($(spread ${PAIRED[happy_p99]})); medians $hlp ms / $hbp ms | ≤ 1.05 | $(verdict "$happy_p99" "<=" 1.05) |
| error storm req/s, layered / bare (empty 502) | **$storm_ratio** ($(spread ${PAIRED[storm]})); medians $sl / $sb | ≥ 0.95 | $(verdict "$storm_ratio" ">=" 0.95) |
| error storm req/s, layered / nginx ($WORKERS workers) | **$storm_nginx** ($(spread ${PAIRED[storm_nginx]})); medians $sl / $sn | ≥ 1.0 | $(verdict "$storm_nginx" ">=" 1.0) |
| error storm req/s, bare / nginx: the proxy stack alone, no layer | **$(median ${PAIRED[storm_bare_nginx]})** ($(spread ${PAIRED[storm_bare_nginx]})) | | |
| noise check: a second bare gateway / bare, same code (should be 1) | **$(median ${PAIRED[storm_aa]})** ($(spread ${PAIRED[storm_aa]})) | | |
| storm response (layered) | $storm_status, $storm_type, $storm_size bytes | negotiated HTML body | |
| stalled: $STALLED requests answered 504 | $stall_answered (wrong $stall_wrong, failed $stall_failed, hung $stall_hung) | all | $stall_ok |
| stalled: slowest 504 | $stall_max_ms ms ($stall_late later than the limit) | ≤ $limit_ms ms | $([ "$stall_late" -eq 0 ] && echo met || echo MISSED) |
| stalled: the 504s left over | $stall_spread_ms ms, $stall_rate per second | | |
| stalled: gateway memory per pending request | $rss_per_pending bytes | bounded | |
| stalled: gateway RSS idle connections / pending / after | $((rss_before / 1048576)) / $((rss_pending / 1048576)) / $((rss_after / 1048576)) MiB | | |
| stalled: gateway RSS after bursts 1 to 6 | $((rss_after_round1 / 1048576)) / $((rss_after_round2 / 1048576)) / $((rss_after_round3 / 1048576)) / $((rss_after_round4 / 1048576)) / $((rss_after_round5 / 1048576)) / $((rss_after_round6 / 1048576)) MiB | levels off (bursts 4 to 6 within 10%) | $mem_back |
EOF
