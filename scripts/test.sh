#!/usr/bin/env bash
# The quick start's second command (and CI's): local services up, the outside tools the tests
# drive (promtool, honcho) installed if missing, then every test against them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/tools.sh
exec cargo test --locked "$@"
