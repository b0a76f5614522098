#!/usr/bin/env bash
# The quick start's second command (and CI's): local services up, then every test against them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
exec cargo test --locked "$@"
