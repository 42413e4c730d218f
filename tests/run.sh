#!/usr/bin/env bash
# Runs every test on a fresh machine: installs the wasm target and a checked
# sqld primary (tests/setup.sh), then runs the workspace's tests and ends
# with one line totalling every test binary's results.
set -euo pipefail
cd "$(dirname "$0")/.."
TURSERVER_SQLD="$(bash tests/setup.sh | tail -n 1)"
export TURSERVER_SQLD
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace "$@" 2>&1 | tee "$log"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
