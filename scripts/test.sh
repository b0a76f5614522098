#!/usr/bin/env bash
# The quick start's second command (and CI's): the formatting and the lints checked, local
# services up, the outside tools the tests drive (promtool, honcho, a headless browser for the
# dashboard's test, the OpenAPI validator and fuzzer) installed if missing, then every test
# against them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
bash scripts/services.sh
bash scripts/tools.sh
bash scripts/openapi-tools.sh >/dev/null
bash scripts/browser.sh >/dev/null
exec cargo test --locked "$@"
