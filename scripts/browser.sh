#!/usr/bin/env bash
# Makes sure a headless browser is there for the dashboard's test (tests/it/dashboard.rs):
# installs Debian's chromium when it is missing, then prints the browser's path.
#
# Safe to run again: an installed browser is left alone. Exits non-zero, saying why, when no
# browser can be had; the test then fails with that message rather than pass unseen.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

say() { echo "browser: $*" >&2; }

find_browser() {
  for name in "${STOCKQ_TEST_CHROMIUM:-}" chromium chromium-browser; do
    if [ -n "$name" ] && command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  done
  return 1
}

if ! find_browser >/dev/null; then
  say "installing chromium from Debian's packages"
  # apt-get may wait for another install that holds its lock
  if ! { $SUDO apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=300 chromium >/dev/null; }; then
    say "could not install chromium (apt-get failed); install it, or set STOCKQ_TEST_CHROMIUM to a Chromium or Chrome binary"
    exit 1
  fi
fi
if ! find_browser; then
  say "no chromium on PATH after installing it; set STOCKQ_TEST_CHROMIUM to a Chromium or Chrome binary"
  exit 1
fi
