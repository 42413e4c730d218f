#!/usr/bin/env bash
# Runs every test on a fresh machine: installs the wasm target and a checked
# sqld primary (tests/setup.sh), then runs the workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
TURSERVER_SQLD="$(bash tests/setup.sh | tail -n 1)"
export TURSERVER_SQLD
cargo test --workspace "$@"
