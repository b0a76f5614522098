#!/usr/bin/env bash
# The whole formation on this machine, as Procfile.dev describes it: local services up, the
# binary built, the database migrated (the release step), then web, worker and janitor under
# honcho until Ctrl-C. Arguments go to `honcho start` (`-p 5000` for another base port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/tools.sh honcho
cargo build --release --locked --quiet
# the build's directory, wherever CARGO_TARGET_DIR puts it (relative to the project when relative)
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
export PATH="$target/release:$PATH"
stockq migrate
exec "${STOCKQ_TOOLS_VENV:-$HOME/.cache/stockq/venv}/bin/honcho" start -f Procfile.dev "$@"
