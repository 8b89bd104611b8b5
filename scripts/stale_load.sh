#!/usr/bin/env bash
# The latency of an answer from a stale copy, end to end on loopback: the example gateway with
# `--stale 1h` answering a 4 KiB page from its copy while its origin refuses every connection,
# next to the same gateway without a store (every request a generated 502) and nginx answering
# from its own cache (`proxy_cache_use_stale error`), all three in front of the same dead origin.
#
#   scripts/stale_load.sh                        # 7 rounds of 5 s per side
#   ROUNDS=11 DURATION=10 scripts/stale_load.sh
#
# Each round runs the sides back to back in rotating order; the table shows each side's median
# and the median of the per-round ratios. Installs nginx and wrk from Debian when missing.
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
need curl curl
need python3 python3

echo "building the example gateway (release)..." >&2
cargo build --release --quiet --example gateway

# --- an origin that serves a page, then goes away -------------------------------------------
ORIGIN=$(free_port)
head -c 4096 /dev/zero | tr '\0' 'x' >"$WORK/page"
# nginx's workers run as nobody: they must read the page and write their cache.
mkdir -p "$WORK/cache"
chmod 755 "$WORK"; chmod 644 "$WORK/page"; chmod 777 "$WORK/cache"
start_nginx origin "server { listen 127.0.0.1:$ORIGIN; location = /page { alias $WORK/page; add_header Cache-Control max-age=1; } }"
ORIGIN_PID=${PIDS[-1]}
wait_for "$ORIGIN"

STALE=$(free_port);  start_gateway "$STALE" "http://127.0.0.1:$ORIGIN" --timeout 5s --stale 1h
PLAIN=$(free_port);  start_gateway "$PLAIN" "http://127.0.0.1:$ORIGIN" --timeout 5s
NGINX=$(free_port)
# nginx forwards every request once its copy is a second old (the origin's max-age ignored, so
# that it asks the origin as the gateway does), and answers from the copy when that fails.
start_nginx stale "proxy_cache_path $WORK/cache keys_zone=pages:1m;
  server { listen 127.0.0.1:$NGINX; location / {
    proxy_pass http://127.0.0.1:$ORIGIN; proxy_cache pages;
    proxy_ignore_headers Cache-Control Expires; proxy_cache_valid 200 1s;
    proxy_cache_use_stale error timeout; add_header X-Cache-Status \$upstream_cache_status; } }"
wait_for "$NGINX"

for port in "$STALE" "$NGINX"; do
  got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$port/page")
  [ "$got" = "200 4096" ] || { echo "127.0.0.1:$port/page gave $got before the outage" >&2; exit 1; }
done

# The origin goes away: every connection to it is refused from now on.
kill "$ORIGIN_PID"
for _ in $(seq 1 100); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$ORIGIN") 2>/dev/null; then break; fi
  sleep 0.05
done
sleep 2 # nginx's copy is now past its second: it forwards, fails, and answers stale

# Each side must answer as it is meant to, or the numbers measure something else.
check() { # port, expected status, a header line it must carry
  curl -s -D "$WORK/head" -o "$WORK/body" "http://127.0.0.1:$1/page"
  head -1 "$WORK/head" | grep -q " $2 " || { echo "127.0.0.1:$1: $(head -1 "$WORK/head")" >&2; exit 1; }
  grep -qi "$3" "$WORK/head" || { echo "127.0.0.1:$1: no '$3' in:" >&2; cat "$WORK/head" >&2; exit 1; }
}
check "$STALE" 200 "cache-status: edge-1; fwd=stale; fwd-status=502"
check "$STALE" 200 "proxy-status: edge-1; error=connection_refused"
check "$PLAIN" 502 "proxy-status: edge-1; error=connection_refused"
check "$NGINX" 200 "x-cache-status: STALE"
grep -i -e '^age' -e '^cache-status' -e '^proxy-status' <(curl -s -D - -o /dev/null "http://127.0.0.1:$STALE/page") >&2

# wrk once; prints "requests_per_second p50_ms p99_ms"
latency_wrk() { # url
  wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$1" 2>&1 | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
def pct(p):
    m = re.search(r"^\s+" + p + r"%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return float(m.group(1)) * scale[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(rps, pct("50"), pct("99"), bad.group(1) if bad else 0)
'
}

echo "machine: $(nproc) cores; wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s; $ROUNDS rounds; $WORKERS workers" >&2
declare -A RPS P50 P99 LAST LAST50 NON2XX PAIRED
SIDES=(stale plain nginx)
declare -A PORT=([stale]=$STALE [plain]=$PLAIN [nginx]=$NGINX)
for round in $(seq 1 "$ROUNDS"); do
  shift_by=$((round % 3))
  order=("${SIDES[@]:$shift_by}" "${SIDES[@]:0:$shift_by}")
  for side in "${order[@]}"; do
    read -r rps p50 p99 non2xx < <(latency_wrk "http://127.0.0.1:${PORT[$side]}/page")
    RPS[$side]+="$rps "; P50[$side]+="$p50 "; P99[$side]+="$p99 "; NON2XX[$side]+="$non2xx "
    LAST[$side]=$rps; LAST50[$side]=$p50
    echo "round $round $side: $rps req/s, p50 $p50 ms, p99 $p99 ms, non-2xx $non2xx" >&2
  done
  PAIRED[rps_plain]+="$(ratio "${LAST[stale]}" "${LAST[plain]}") "
  PAIRED[p50_plain]+="$(ratio "${LAST50[stale]}" "${LAST50[plain]}") "
  PAIRED[rps_nginx]+="$(ratio "${LAST[stale]}" "${LAST[nginx]}") "
done

cat <<TABLE

| side (origin refusing every connection) | req/s, median | p50, median | p99, median | answers |
|---|---|---|---|---|
| gateway \`--stale 1h\`: the 4 KiB copy | $(median ${RPS[stale]}) | $(median ${P50[stale]}) ms | $(median ${P99[stale]}) ms | 200, stale (non-2xx: $(python3 -c 'import sys; print(sum(int(x) for x in sys.argv[1:]))' ${NON2XX[stale]})) |
| gateway without a store: generated 502 | $(median ${RPS[plain]}) | $(median ${P50[plain]}) ms | $(median ${P99[plain]}) ms | 502 problem+json |
| nginx \`proxy_cache_use_stale error\` ($WORKERS workers) | $(median ${RPS[nginx]}) | $(median ${P50[nginx]}) ms | $(median ${P99[nginx]}) ms | 200, STALE |

| paired ratio (median of $ROUNDS rounds; range) | value |
|---|---|
| req/s, stale copy / generated 502 | **$(median ${PAIRED[rps_plain]})** ($(spread ${PAIRED[rps_plain]})) |
| p50, stale copy / generated 502 | **$(median ${PAIRED[p50_plain]})** ($(spread ${PAIRED[p50_plain]})) |
| req/s, gateway stale copy / nginx stale copy | **$(median ${PAIRED[rps_nginx]})** ($(spread ${PAIRED[rps_nginx]})) |
TABLE
