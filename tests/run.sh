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
skipped=""
if [ ! -x .tools/spin/spin ] && [ -z "${TURSERVER_SPIN:-}" ]; then
  skipped="; skipped: the checks under real Spin (no ../shared/tools/spin to install it from, no TURSERVER_SPIN)"
fi
awk -v skipped="$skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed%s\n", p, f, skipped }' "$log"
