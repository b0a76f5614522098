#!/usr/bin/env bash
# Installs the outside tools that the test suite and scripts/dev.sh drive, when they are missing:
#
#   promtool  Prometheus's own checker of /metrics text (Debian's `prometheus` package)
#   honcho    a Procfile runner, as a developer runs Procfile.dev (from PyPI, into a virtualenv
#             of its own under ~/.cache/stockq/venv, or $STOCKQ_TOOLS_VENV)
#   redis-py  Redis's Python client, in the same virtualenv, for scripts/lua-cost.sh (only when
#             asked for by name)
#
# Run by scripts/test.sh and scripts/dev.sh, and by the tests when they do not find a tool. Safe to
# run again: what is there is left alone. `bash scripts/tools.sh honcho` installs one.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
VENV="${STOCKQ_TOOLS_VENV:-$HOME/.cache/stockq/venv}"
HONCHO_VERSION="2.0.0"
REDIS_PY_VERSION="5.2.1"

say() { echo "tools: $*" >&2; }

tools=("$@")
if [ ${#tools[@]} -eq 0 ]; then tools=(promtool honcho); fi

for tool in "${tools[@]}"; do
  case "$tool" in
    promtool)
      if ! command -v promtool >/dev/null 2>&1; then
        say "installing promtool (Debian's prometheus package)"
        $SUDO apt-get update -qq
        # Only promtool is wanted, not a Prometheus server: where nothing decides whether the
        # package may start its service, say no for the length of the install.
        policy=/usr/sbin/policy-rc.d
        made_policy=""
        if [ ! -e "$policy" ]; then
          printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
          $SUDO chmod +x "$policy"
          made_policy=1
        fi
        status=0
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus \
          >/dev/null || status=$?
        if [ -n "$made_policy" ]; then $SUDO rm -f "$policy"; fi
        if [ $status -ne 0 ]; then say "apt-get install prometheus failed ($status)"; exit $status; fi
      fi
      ;;
    honcho)
      if [ ! -x "$VENV/bin/honcho" ]; then
        say "installing honcho $HONCHO_VERSION into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "honcho==$HONCHO_VERSION"
      fi
      ;;
    redis-py)
      if ! "$VENV/bin/python" -c "import redis" 2>/dev/null; then
        say "installing redis-py $REDIS_PY_VERSION into $VENV"
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "redis==$REDIS_PY_VERSION"
      fi
      ;;
    *)
      say "unknown tool $tool (promtool, honcho, redis-py)"; exit 2
      ;;
  esac
done
