#!/usr/bin/env bash
# Screenshots of the built-in HTML error page, as a browser shows it, for the README.
#
#   scripts/screenshot.sh            # docs/error-page.png and docs/error-page-dark.png
#
# Starts examples/gateway.rs (with its embedded demo upstream) on a free loopback port, points
# headless Chromium at /reset (a connection reset: 502), and checks the DOM Chromium built: one
# <h1>, the status, no console messages. Installs Debian's chromium when it is missing.
set -euo pipefail
set -m # background jobs get their own process group, so the gateway can be stopped whole
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-dejavu-core
fi

work=$(mktemp -d)
gateway_pid=""
cleanup() {
    if [ -n "$gateway_pid" ]; then
        kill -- "-$gateway_pid" 2>/dev/null || true
        wait "$gateway_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --quiet --example gateway
cargo run --quiet --example gateway -- --listen 127.0.0.1:0 >"$work/gateway.out" 2>"$work/gateway.err" &
gateway_pid=$!

url=""
for _ in $(seq 1 300); do
    url=$(sed -n 's|^listening on \(http://127\.0\.0\.1:[0-9]*\).*|\1|p' "$work/gateway.out")
    [ -n "$url" ] && break
    kill -0 "$gateway_pid" 2>/dev/null || { cat "$work/gateway.err" >&2; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { echo "the gateway did not start listening" >&2; exit 1; }
page="$url/reset"
echo "gateway on $url; page $page"

chrome() {
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --disable-default-apps --disable-extensions --hide-scrollbars \
        --enable-logging=stderr --v=0 \
        --user-data-dir="$(mktemp -d -p "$work")" --window-size=1000,700 "$@" "$page"
}

chrome --dump-dom >"$work/dom.html" 2>"$work/dom.log"
grep -q '<h1>Bad Gateway</h1>' "$work/dom.html" || { echo "no <h1>Bad Gateway</h1> in the page:" >&2; cat "$work/dom.html" >&2; exit 1; }
grep -q '502' "$work/dom.html" || { echo "the page does not show the status" >&2; exit 1; }
if grep -q '<script' "$work/dom.html"; then echo "the page has a script element" >&2; exit 1; fi
if grep -E 'CONSOLE|Uncaught|Refused to' "$work/dom.log" >&2; then
    echo "the page logged console messages (above)" >&2
    exit 1
fi
echo "DOM ok: <h1>Bad Gateway</h1>, status 502, no scripts, no console messages"

mkdir -p docs
chrome --screenshot=docs/error-page.png 2>"$work/light.log"
chrome --screenshot=docs/error-page-dark.png --force-dark-mode --blink-settings=preferredColorScheme=0 2>"$work/dark.log"
ls -l docs/error-page.png docs/error-page-dark.png
