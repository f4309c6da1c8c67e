#!/usr/bin/env bash
# Starts (or checks) every service the test suite needs on a fresh machine of this kind, and
# fails loudly naming the service when one cannot be brought up. Sourced by scripts/test.sh;
# `bash scripts/services.sh` alone just ensures them.
set -euo pipefail

TANSU_PORT=${TANSU_PORT:-9092}
LOG_DIR=${COURIER_LOG_DIR:-/tmp/courier-services}
mkdir -p "$LOG_DIR"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
  for _ in $(seq 1 $(( $3 * 10 ))); do port_open "$2" && return 0; sleep 0.1; done
  echo "FATAL: $1 did not come up on 127.0.0.1:$2 (logs in $LOG_DIR)" >&2
  return 1
}

# The binaries of the tests' private PostgreSQL and MariaDB servers (TLS with a CA made at test
# time; crates/courier-conformance/src/private_db), which the shared servers' packages bring too.
# Installs the Debian packages `$@` (log: apt-<first package>.log), failing loudly.
apt_install() {
  echo "installing $*"
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; } \
    >"$LOG_DIR/apt-$1.log" 2>&1 || {
    echo "FATAL: apt-get install $* failed; see $LOG_DIR/apt-$1.log" >&2; return 1; }
}

ensure_database_packages() {
  local missing=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  [[ -x /usr/sbin/mariadbd && -x /usr/bin/mariadb-install-db ]] || missing+=(mariadb-server)
  [[ -x /usr/bin/mariadb ]] || missing+=(mariadb-client)
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
}

ensure_postgres() {
  port_open 5432 && return 0
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  wait_port PostgreSQL 5432 30
}

ensure_mariadb() {
  port_open 3306 && return 0
  echo "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_port MariaDB 3306 30
}

# Named time zones (MariaDB installs none): the outbox tests run the lease clock in a session set
# to a zone with daylight saving time.
ensure_mariadb_time_zones() {
  local have
  have=$(mariadb -uroot -h127.0.0.1 -N -e "SELECT COUNT(*) FROM mysql.time_zone_name WHERE Name = 'Europe/Berlin'")
  [[ "$have" != 0 ]] && return 0
  echo "loading MariaDB's time zone tables from /usr/share/zoneinfo"
  mariadb-tzinfo-to-sql /usr/share/zoneinfo 2>"$LOG_DIR/tzinfo.log" | mariadb -uroot -h127.0.0.1 mysql || {
    echo "FATAL: loading MariaDB's time zones failed; see $LOG_DIR/tzinfo.log" >&2; return 1; }
}

ensure_nats() {
  port_open 4222 && return 0
  echo "starting nats-server"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port nats-server 4222 30
}

ensure_tansu() {
  port_open "$TANSU_PORT" && return 0
  if ! command -v tansu >/dev/null; then
    echo "installing the Tansu Kafka-compatible broker (once; 12 to 45 minutes, depending on the machine)"
    cargo install tansu --locked --features dynostore >"$LOG_DIR/tansu-install.log" 2>&1 || {
      echo "FATAL: cargo install tansu failed; see $LOG_DIR/tansu-install.log" >&2; return 1; }
  fi
  echo "starting tansu on 127.0.0.1:$TANSU_PORT"
  nohup tansu broker --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
    --storage-engine memory://tansu/ >"$LOG_DIR/tansu.log" 2>&1 &
  wait_port tansu "$TANSU_PORT" 60
}

# psycopg and PyMySQL: the outbox's plain-SQL enqueue tests (courier-outbox tests/python).
ensure_python_clients() {
  python3 -c "import kafka, nats, psycopg, pymysql" 2>/dev/null && return 0
  echo "installing kafka-python, nats-py, psycopg and PyMySQL (independent clients for interop tests)"
  python3 -m pip install --quiet kafka-python nats-py "psycopg[binary]" PyMySQL >"$LOG_DIR/pip.log" 2>&1 || {
    echo "FATAL: pip install kafka-python nats-py psycopg[binary] PyMySQL failed; see $LOG_DIR/pip.log" >&2; return 1; }
}

# Debian packages the Kafka backend needs: libssl-dev and pkg-config to build librdkafka with TLS
# and SASL (rdkafka's `ssl` feature links the system OpenSSL), socat for the Kafka security tests
# (it puts a TLS listener in front of a private Tansu, whose own TLS does not work).
ensure_kafka_packages() {
  local missing=() pkg
  for pkg in libssl-dev pkg-config socat; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
}

# The dashboard's browser tests (crates/courier-cli/tests/dashboard_browser.rs): Debian's Chromium,
# driven by playwright-core from npm, installed next to its package.json (node_modules is not
# committed; package-lock.json pins the version).
BROWSER_TESTS=crates/courier-cli/tests/browser
ensure_browser_tests() {
  [[ -x /usr/bin/chromium ]] || apt_install chromium
  command -v npm >/dev/null || apt_install nodejs npm
  local root; root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  [[ -f "$root/$BROWSER_TESTS/node_modules/playwright-core/package.json" ]] && return 0
  echo "installing playwright-core from npm into $BROWSER_TESTS/node_modules"
  (cd "$root/$BROWSER_TESTS" && npm ci --no-audit --no-fund) >"$LOG_DIR/npm.log" 2>&1 || {
    echo "FATAL: npm ci in $BROWSER_TESTS failed; see $LOG_DIR/npm.log" >&2; return 1; }
}

ensure_all() {
  ensure_kafka_packages
  ensure_database_packages
  ensure_postgres
  ensure_mariadb
  ensure_mariadb_time_zones
  ensure_nats
  ensure_tansu
  ensure_python_clients
  ensure_browser_tests
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  ensure_all
fi
