#!/usr/bin/env bash
# Installs the tools that check docs/openapi.json (tests/it/openapi.rs), from PyPI, into a
# virtualenv of their own, exactly as scripts/openapi-tools.txt pins them:
#
#   openapi-spec-validator  validates the document against the OpenAPI 3.1 specification
#   schemathesis            fuzzes a live `stockq serve` from the document
#
# The virtualenv is ~/.cache/stockq/openapi-venv (or $STOCKQ_OPENAPI_VENV). Safe to run again:
# a virtualenv made from the same pins is left alone, one made from other pins is made anew.
# Prints the virtualenv's bin directory. Run by scripts/test.sh, and by the test when the tools
# are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PINS="scripts/openapi-tools.txt"
VENV="${STOCKQ_OPENAPI_VENV:-$HOME/.cache/stockq/openapi-venv}"

fail() { echo "openapi-tools: $*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || fail "python3 is missing (Debian: apt-get install python3 python3-venv)"
want="$(sha256sum "$PINS" | cut -d' ' -f1)"
mkdir -p "$(dirname "$VENV")"
# one install at a time, however many callers
exec 9>"$VENV.lock"
flock 9
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$want" ] \
  || [ ! -x "$VENV/bin/schemathesis" ] || [ ! -x "$VENV/bin/openapi-spec-validator" ]; then
  echo "openapi-tools: installing $PINS into $VENV" >&2
  log="$(dirname "$VENV")/openapi-tools.log"
  rm -rf "$VENV"
  python3 -m venv "$VENV" >"$log" 2>&1 \
    || fail "python3 -m venv $VENV failed (Debian: apt-get install python3-venv); see $log"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$PINS" >>"$log" 2>&1 \
    || fail "pip install -r $PINS failed; see $log"
  echo "$want" >"$VENV/.pins"
fi
echo "$VENV/bin"
