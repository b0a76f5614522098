#!/usr/bin/env bash
# Starts the local services stockq needs, on loopback only, and creates its MySQL account.
#
#   Redis    127.0.0.1:6379  (no persistence: this is for the demo and the tests)
#   MariaDB  127.0.0.1:3306  account stockq/stockq with all rights on databases named stockq*
#
# Installs redis-server and mariadb-server from Debian's packages when they are missing.
# Safe to run again: whatever already runs is left alone.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

say() { echo "services: $*" >&2; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; } || missing+=(mariadb-server)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian's packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  say "$what did not come up within ${secs}s"; return 1
}

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  say "starting Redis on 127.0.0.1:6379"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --maxmemory-policy noeviction --dir /var/lib/redis --logfile /var/log/redis/stockq.log
  wait_for Redis 15 redis-cli -h 127.0.0.1 -p 6379 ping
fi

mysql_up() { mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -u stockq -pstockq ping 2>/dev/null | grep -q alive || $SUDO mariadb-admin ping >/dev/null 2>&1; }
if ! mysql_up; then
  say "starting MariaDB on 127.0.0.1:3306"
  $SUDO mkdir -p /run/mysqld
  $SUDO chown mysql:mysql /run/mysqld 2>/dev/null || true
  if [ ! -d /var/lib/mysql/mysql ]; then
    $SUDO mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql --bind-address=127.0.0.1
  wait_for MariaDB 60 $SUDO mariadb-admin ping
fi

# A dedicated account with a real password (never root): see docs/security.md, "MySQL account".
# Both host entries, since a TCP connection to 127.0.0.1 may match either.
$SUDO mariadb -uroot <<'SQL'
CREATE USER IF NOT EXISTS 'stockq'@'localhost' IDENTIFIED BY 'stockq';
CREATE USER IF NOT EXISTS 'stockq'@'127.0.0.1' IDENTIFIED BY 'stockq';
GRANT ALL PRIVILEGES ON `stockq%`.* TO 'stockq'@'localhost';
GRANT ALL PRIVILEGES ON `stockq%`.* TO 'stockq'@'127.0.0.1';
SQL
say "Redis and MariaDB are up; stockq's account is ready"
