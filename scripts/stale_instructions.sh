#!/usr/bin/env bash
# What the last-good-copy store costs, in instructions per request, counted by callgrind: each
# case of benches/stale.rs sends N and then 2N requests in a process of its own, and the
# difference divided by N is one request's cost, setup excluded. Instruction counts do not move
# with the machine's load, unlike the criterion timings.
#
#   scripts/stale_instructions.sh          # N=2000
#   N=5000 scripts/stale_instructions.sh
#
# Installs valgrind from Debian when missing. Nothing listens or connects: the inner services
# answer in memory.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-2000}
if ! command -v valgrind >/dev/null 2>&1; then
  echo "installing valgrind from Debian..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi

echo "building benches/stale.rs (release)..." >&2
BIN=$(cargo bench --bench stale --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "stale" and m.get("executable"):
        print(m["executable"])')
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Prints the instructions of one run of `case` with `count` requests.
instructions() { # case, count
  valgrind --tool=callgrind --callgrind-out-file="$WORK/out" "$BIN" --count "$2" --case "$1" \
    >/dev/null 2>"$WORK/log"
  awk '/^summary:/ {print $2}' "$WORK/out"
}

CASES=(
  "GET 4 KiB, layer without a store"
  "GET 4 KiB no-store, layer with a store"
  "GET 4 KiB, stored (replacing the copy)"
  "GET 64 KiB, layer without a store"
  "GET 64 KiB no-store, layer with a store"
  "GET 64 KiB, stored (replacing the copy)"
  "GET refused, generated 502"
  "GET refused, answered from a 4 KiB copy"
  "GET refused, answered from a 64 KiB copy"
)
echo "instructions per request (callgrind, user space; (runs of $((2 * N)) - runs of $N) / $N)"
echo "| case | instructions/request |"
echo "|---|---|"
for case in "${CASES[@]}"; do
  one=$(instructions "$case" "$N")
  two=$(instructions "$case" $((2 * N)))
  python3 -c "import sys; print(f'| {sys.argv[1]} | {(int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4]):,.0f} |')" \
    "$case" "$one" "$two" "$N"
done
