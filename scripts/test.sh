#!/usr/bin/env bash
# The quick start's second command (and CI's): local services up, a headless browser for the
# dashboard's test, then every test against them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/browser.sh >/dev/null
exec cargo test --locked "$@"
