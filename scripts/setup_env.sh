#!/usr/bin/env bash
# Create ./.venv (if missing) and install labelmaker with the given extras into it.
# Usage: scripts/setup_env.sh [extras]   e.g. scripts/setup_env.sh cpu,test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-cpu}"

# open3d needs libusb-1.0 (and GL/X libraries on a bare image) from the system.
if ! ldconfig -p | grep -q "libusb-1.0.so.0" || ! ldconfig -p | grep -q "libGL.so.1"; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[setup] installing system libraries for open3d (libusb-1.0-0 libgl1 libegl1 libx11-6)"
    (apt-get install -y --no-install-recommends libusb-1.0-0 libgl1 libegl1 libx11-6 >/dev/null 2>&1 ||
      (apt-get update -qq >/dev/null && apt-get install -y --no-install-recommends libusb-1.0-0 libgl1 libegl1 libx11-6 >/dev/null))
  else
    echo "[setup] please install libusb-1.0-0 libgl1 libegl1 libx11-6 (open3d needs them)" >&2
  fi
fi

# The batch report's tests open it in a real browser: headless Chromium (Debian's package).
if [[ ",$extras," == *",test,"* ]] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[setup] installing chromium (headless browser for the report tests)"
    (apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 ||
      (apt-get update -qq >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null)) ||
      echo "[setup] could not install chromium: the browser tests will be skipped (CI fails them)" >&2
  else
    echo "[setup] please install chromium (apt-get install chromium): the report's browser tests need it" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing labelmaker[$extras] into .venv (first time: about a minute)"
  # (filters out pip's notes about find-links folders this machine's pip config names but lacks)
  .venv/bin/python -m pip install -q --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[$extras]" 2> >(grep -v "is ignored: it is neither" >&2)
  touch "$stamp"
fi
