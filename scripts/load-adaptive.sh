#!/usr/bin/env bash
# Load runs for the adaptive concurrency limit (BENCHMARKS.md, "Brownouts"): a brownout origin on
# loopback that serves CAPACITY requests at a time, SERVICE_MS each, and queues the rest (its
# latency grows with the load), offered 3x its capacity for OVERLOAD seconds, then 0.5x for
# RECOVERY seconds, through four sides in turn, each with a fresh origin:
#
#   none      the example gateway without a limit
#   static    the example gateway with tower's ConcurrencyLimit of CAPACITY (--static-limit)
#   adaptive  the example gateway with --adaptive-limit
#   nginx     nginx with `max_conns=CAPACITY` on its upstream
#
#   scripts/load-adaptive.sh                          # defaults: capacity 4 x 25 ms, 30 s + 15 s
#   CAPACITY=8 SERVICE_MS=20 OVERLOAD=30 RECOVERY=15 scripts/load-adaptive.sh
#   SIDES="adaptive nginx" scripts/load-adaptive.sh
#
# The load is open-loop (requests arrive at a fixed rate whatever the answers take, one connection
# each, as independent clients do), from a Python generator that times every request, so that the
# latencies of answers and of refusals can be told apart. Before each side, 3 s at a quarter of
# the capacity measure the unloaded latency (and let the adaptive limit learn it).
#
# Reported per side: successful requests per second during the overload (and as a share of the
# origin's capacity), their p50 and p99, the p99 of refusals (503 from the gateway, 502 from
# nginx), 504s, requests left without an answer for 15 s (the generator's own limit), the
# server's peak memory (VmHWM; nginx: its workers'), and the recovery: from the
# switch to 0.5x, how long until every later request succeeds.
#
# Installs nginx from Debian when missing. Everything listens on 127.0.0.1; every run is bounded
# by OVERLOAD + RECOVERY + a few seconds per side.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=0 CONNECTIONS=0 WRK_THREADS=0
WORKERS=${WORKERS:-2}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

CAPACITY=${CAPACITY:-4}
SERVICE_MS=${SERVICE_MS:-25}
OVERLOAD=${OVERLOAD:-30}
RECOVERY=${RECOVERY:-15}
TIMEOUT=${TIMEOUT:-5s}
SIDES=${SIDES:-none static adaptive nginx}

need nginx nginx-light
need python3 python3

echo "building the example gateway (release)..." >&2
cargo build --release --quiet --example gateway

# The brownout origin: CAPACITY workers, the rest queue in arrival order; it never notices that a
# client gave up, so a request whose client left is still served (as a real origin does).
cat >"$WORK/origin.py" <<'EOF'
import asyncio, sys
port, capacity, service = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000
workers = None
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-type: text/plain\r\n\r\nok\n"
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            async with workers:
                await asyncio.sleep(service)
            writer.write(RESPONSE)
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    except Exception:
        pass
    finally:
        writer.close()
async def main():
    global workers
    workers = asyncio.Semaphore(capacity)
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()
asyncio.run(main())
EOF

# The load: phases of "rate seconds label", open-loop; prints one JSON line of every request's
# label, start offset, latency and status (0: no answer within 15 s, or a broken connection).
cat >"$WORK/load.py" <<'EOF'
import asyncio, json, sys, time
port = int(sys.argv[1]); phases = [(float(r), float(s), l) for r, s, l in (p.split(":") for p in sys.argv[2:])]
REQUEST = b"GET /orders HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: application/json\r\nconnection: close\r\n\r\n"
records = []
async def one(label, t0, origin):
    started = time.monotonic()
    status = 0
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 15)
        writer.write(REQUEST)
        line = await asyncio.wait_for(reader.readline(), 15)
        status = int(line.split()[1])
        await asyncio.wait_for(reader.read(), 15)
        writer.close()
    except Exception:
        pass
    records.append((label, started - origin, time.monotonic() - started, status))
async def main():
    origin = time.monotonic()
    tasks = []
    t = origin
    for rate, seconds, label in phases:
        end = t + seconds
        n = 0
        start = t
        while True:
            at = start + n / rate
            if at >= end:
                break
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(label, at, origin)))
            n += 1
        t = end
    await asyncio.gather(*tasks)
    print(json.dumps(records))
asyncio.run(main())
EOF

# Summarises one side's records: the table row's cells.
cat >"$WORK/summary.py" <<'EOF'
import json, sys
records = json.load(open(sys.argv[1])); capacity = float(sys.argv[2]); overload = float(sys.argv[3])
warm_end = 3.0; switch = warm_end + overload
def pct(values, p):
    if not values: return float("nan")
    values = sorted(values); return values[min(len(values) - 1, int(round(p * (len(values) - 1))))] * 1000
unloaded = [lat for label, t, lat, st in records if label == "warm" and st == 200]
over = [(t, lat, st) for label, t, lat, st in records if label == "over"]
ok = [lat for t, lat, st in over if st == 200]
refused = [lat for t, lat, st in over if st in (502, 503)]
timeouts = sum(1 for t, lat, st in over if st == 504) + sum(1 for label, t, lat, st in records if label == "after" and st == 504)
unanswered = sum(1 for label, t, lat, st in records if label != "warm" and st == 0)
# Recovery: from the switch, the start of the first request after which every request succeeds.
after = sorted((t, st) for label, t, lat, st in records if label == "after")
recovered = None
for i, (t, st) in enumerate(after):
    if all(s == 200 for _, s in after[i:]):
        recovered = t - switch; break
rate = len(ok) / overload
print(json.dumps({
    "unloaded_p50": round(pct(unloaded, 0.5), 1), "unloaded_p99": round(pct(unloaded, 0.99), 1),
    "ok_rps": round(rate, 1), "share": round(100 * rate / capacity), "ok_p50": round(pct(ok, 0.5), 1),
    "ok_p99": round(pct(ok, 0.99), 1), "refused": len(refused), "refused_p99": round(pct(refused, 0.99), 2),
    "timeouts": timeouts, "unanswered": unanswered,
    "recovery": "not within the phase" if recovered is None else f"{max(recovered, 0.0):.2f} s",
}))
EOF

rate=$(python3 -c "print($CAPACITY * 1000 / $SERVICE_MS)")
peak_kib() { # pids...
  local total=0 pid
  for pid in "$@"; do total=$((total + $(awk '/^VmHWM/ {print $2}' "/proc/$pid/status"))); done
  echo "$total"
}
echo "origin: $CAPACITY at a time x $SERVICE_MS ms = $rate req/s; offered 3x for ${OVERLOAD}s, then 0.5x for ${RECOVERY}s" >&2
declare -A ROW
for side in $SIDES; do
  ORIGIN=$(free_port)
  python3 "$WORK/origin.py" "$ORIGIN" "$CAPACITY" "$SERVICE_MS" &
  origin_pid=$!
  PIDS+=("$origin_pid")
  wait_for "$ORIGIN"
  PORT=$(free_port)
  case $side in
    none) start_gateway "$PORT" "http://127.0.0.1:$ORIGIN" --timeout "$TIMEOUT"; pids=${PIDS[-1]};;
    static) start_gateway "$PORT" "http://127.0.0.1:$ORIGIN" --timeout "$TIMEOUT" --static-limit "$CAPACITY"; pids=${PIDS[-1]};;
    adaptive) start_gateway "$PORT" "http://127.0.0.1:$ORIGIN" --timeout "$TIMEOUT" --adaptive-limit; pids=${PIDS[-1]};;
    nginx)
      start_nginx "adaptive-$PORT" "upstream brownout { server 127.0.0.1:$ORIGIN max_conns=$CAPACITY; keepalive 64; }
  server { listen 127.0.0.1:$PORT; location / { proxy_pass http://brownout; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_read_timeout $TIMEOUT; } }"
      wait_for "$PORT"
      pids=$(pgrep -P "${PIDS[-1]}" | tr '\n' ' ');;
  esac
  echo "side $side..." >&2
  python3 "$WORK/load.py" "$PORT" \
    "$(python3 -c "print($rate / 4)"):3:warm" \
    "$(python3 -c "print($rate * 3)"):$OVERLOAD:over" \
    "$(python3 -c "print($rate / 2)"):$RECOVERY:after" >"$WORK/$side.json"
  # shellcheck disable=SC2086
  memory=$(( $(peak_kib $pids) / 1024 ))
  ROW[$side]=$(python3 "$WORK/summary.py" "$WORK/$side.json" "$rate" "$OVERLOAD" | python3 -c "
import json, sys
s = json.load(sys.stdin)
print(f\"| $side | {s['ok_rps']} ({s['share']} %) | {s['ok_p50']} / {s['ok_p99']} ms | {s['refused']}, p99 {s['refused_p99']} ms | {s['timeouts']} | {s['unanswered']} | $memory MiB | {s['recovery']} | {s['unloaded_p50']} / {s['unloaded_p99']} ms |\")
")
  echo "${ROW[$side]}" >&2
  kill "$origin_pid" 2>/dev/null || true
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
done

cat <<EOF

Origin: $CAPACITY requests at a time, $SERVICE_MS ms each ($rate req/s); offered $(python3 -c "print($rate * 3)") req/s for ${OVERLOAD} s, then $(python3 -c "print($rate / 2)") req/s for ${RECOVERY} s; upstream timeout $TIMEOUT; $WORKERS worker threads.

| side | successful req/s in the overload (share of capacity) | successful p50 / p99 | refusals, p99 | 504s | unanswered in 15 s | peak memory | recovery after the switch | unloaded p50 / p99 |
|---|---|---|---|---|---|---|---|---|
EOF
for side in $SIDES; do echo "${ROW[$side]}"; done
