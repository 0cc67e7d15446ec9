#!/usr/bin/env bash
# Install what the browser tests (tests/test_jupyter_browser.py) need:
#   * Debian's chromium (/usr/bin/chromium) from apt, and
#   * the playwright Python package comes with the `test` extra (scripts/bootstrap.sh test).
# playwright drives that chromium through `executable_path`; there is no
# `playwright install` browser download. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "install-browser: chromium is missing and installing it needs root (apt-get install chromium)" >&2
    exit 1
  fi
  echo "install-browser: installing chromium (apt)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
echo "install-browser: $(chromium --version 2>/dev/null)" >&2
