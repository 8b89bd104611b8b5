#!/usr/bin/env bash
# Offline license and bans check, the same policy as deny.toml, for machines without cargo-deny.
#
# Reads `cargo metadata` (all features, every platform) and checks the SPDX `license` expression
# of every dependency against an allowlist. A dependency the crate ships with (normal and build
# dependencies, followed transitively) must be allowed by the strict list; one reached only
# through dev-dependencies (test tools such as scraper) may also use MPL-2.0, a file-level
# copyleft that binds nobody who builds on this crate, or CDLA-Permissive-2.0, the permissive
# data license of Mozilla's root certificates (webpki-roots, for the example's HTTPS upstreams). A missing license fails. Wildcard version
# requirements in Cargo.toml fail; several versions of one shipped crate are reported, not fatal.
#
# Usage: scripts/check-licenses.sh   (exit 1 on any violation)
set -euo pipefail
cd "$(dirname "$0")/.."

metadata=$(mktemp)
trap 'rm -f "$metadata"' EXIT
cargo metadata --format-version 1 --all-features --locked >"$metadata"

python3 - "$metadata" <<'PY'
import json, re, sys
from collections import defaultdict

STRICT = {
    "MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Unicode-3.0", "Zlib",
    "CC0-1.0", "0BSD", "BSL-1.0", "Unlicense",
}
# Only for crates reached through dev-dependencies alone.
TEST_ONLY = STRICT | {"MPL-2.0", "CDLA-Permissive-2.0"}
# `X WITH exception` counts as X when the exception only widens what X allows.
EXCEPTIONS = {"LLVM-exception"}


def tokens(expression):
    # Old crates write "MIT/Apache-2.0" for "MIT OR Apache-2.0".
    expression = expression.replace("/", " OR ")
    return re.findall(r"\(|\)|[A-Za-z0-9.+-]+", expression)


def allowed(expression, allow):
    """Evaluates an SPDX expression: OR binds looser than AND, WITH tightest."""
    toks = tokens(expression)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def primary():
        tok = take()
        if tok == "(":
            value = disjunction()
            if take() != ")":
                raise ValueError("unbalanced parentheses")
            return value
        licence = tok.rstrip("+")
        ok = licence in allow
        if peek() == "WITH":
            take()
            ok = ok and take() in EXCEPTIONS
        return ok

    def conjunction():
        value = primary()
        while peek() == "AND":
            take()
            value = primary() and value
        return value

    def disjunction():
        value = conjunction()
        while peek() == "OR":
            take()
            value = conjunction() or value
        return value

    result = disjunction()
    if pos != len(toks):
        raise ValueError("trailing tokens")
    return result


with open(sys.argv[1]) as file:
    meta = json.load(file)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = meta["resolve"]["root"]

# What ships: everything reachable from the root through a non-dev edge.
shipped, stack = set(), [root]
while stack:
    current = stack.pop()
    if current in shipped:
        continue
    shipped.add(current)
    for dep in nodes[current]["deps"]:
        if any(kind["kind"] != "dev" for kind in dep["dep_kinds"]):
            stack.append(dep["pkg"])

problems = []
for dep in packages[root]["dependencies"]:
    if dep["req"].strip() == "*":
        problems.append(f"wildcard version requirement: {dep['name']} = '*'")

checked = 0
for package_id in nodes:
    if package_id == root:
        continue
    package = packages[package_id]
    checked += 1
    name = f"{package['name']} {package['version']}"
    expression = package.get("license")
    is_shipped = package_id in shipped
    if not expression:
        problems.append(f"{name}: no SPDX license expression (license_file: {package.get('license_file')})")
        continue
    try:
        ok = allowed(expression, STRICT if is_shipped else TEST_ONLY)
    except (ValueError, IndexError) as error:
        problems.append(f"{name}: unreadable license expression {expression!r} ({error})")
        continue
    if not ok:
        where = "shipped" if is_shipped else "test-only"
        problems.append(f"{name} ({where}): license {expression!r} is not allowed")

versions = defaultdict(set)
for package_id in shipped - {root}:
    versions[packages[package_id]["name"]].add(packages[package_id]["version"])
duplicates = {n: sorted(v) for n, v in versions.items() if len(v) > 1}
for name, found in sorted(duplicates.items()):
    print(f"note: several versions of {name} ship: {', '.join(found)}")

test_only = checked - (len(shipped) - 1)
if problems:
    for problem in problems:
        print(f"license check: {problem}", file=sys.stderr)
    sys.exit(1)
print(f"license check: {checked} dependencies ({len(shipped) - 1} shipped, {test_only} test-only): all allowed")
PY
