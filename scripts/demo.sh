#!/usr/bin/env bash
# The quick start's first command: local services up, then a flash sale end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
exec cargo run --release --locked --quiet -- demo "$@"
