#!/usr/bin/env bash
# Measures the dashboard's events pages on a PostgreSQL outbox of ROWS rows (default 1,000,000:
# 97% published, 2.5% pending, 0.5% dead over 10,000 aggregates and 8 topics), as an operator
# sees them: `courier dashboard` serving over HTTP, each URL requested REPEAT times (default 50)
# with curl after one warm-up request; prints p50/p99/max in ms per URL. Not a test: figures go
# to the closing notes of changes that could move them.
#
#   bash scripts/bench-dashboard.sh [postgres://postgres@127.0.0.1:5432] [ROWS] [REPEAT]
#
# COURIER_BIN picks the binary (default target/release/courier, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER=${1:-postgres://postgres@127.0.0.1:5432}
ROWS=${2:-1000000}
REPEAT=${3:-50}
BIN=${COURIER_BIN:-target/release/courier}
[[ -x "$BIN" ]] || cargo build --release -p courier-cli
DB="courier_dash_bench_$$"
URL="$SERVER/$DB"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

psql "$SERVER/postgres" -qc "CREATE DATABASE $DB"
cleanup() {
  [[ -n "${DASH_PID:-}" ]] && kill "$DASH_PID" 2>/dev/null && wait "$DASH_PID" 2>/dev/null
  psql "$SERVER/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
}
trap cleanup EXIT

"$BIN" migrate --db "$URL" >/dev/null
echo "filling $ROWS rows"
psql "$URL" -q <<SQL
INSERT INTO courier_outbox (event_id, topic, aggregate_type, aggregate_id, shard, event_type, event_version,
    payload, headers, occurred_at_us, created_at_us, status, attempts, last_error, published_at_us)
SELECT gen_random_uuid()::text, 'topic-' || (g % 8), 'order', 'order-' || (g % 10000), g % 1000,
    CASE WHEN g % 3 = 0 THEN 'OrderPaid' ELSE 'OrderPlaced' END, 1,
    convert_to('{"order":' || g || ',"total_cents":' || (g % 9999) || '}', 'UTF8'), '{}',
    1764590000000000 + g * 1000, 1764590000000000 + g * 1000,
    CASE WHEN g % 200 = 0 THEN 'dead' WHEN g % 40 = 0 THEN 'pending' ELSE 'published' END,
    CASE WHEN g % 200 = 0 THEN 10 ELSE 0 END,
    CASE WHEN g % 200 = 0 THEN 'stream not found: topic-' || (g % 8) END,
    CASE WHEN g % 200 <> 0 AND g % 40 <> 0 THEN 1764590000000000 + g * 1000 + 5000 END
FROM generate_series(1, $ROWS) g;
ANALYZE courier_outbox;
SQL

"$BIN" dashboard --db "$URL" --listen "127.0.0.1:$PORT" 2>/dev/null &
DASH_PID=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/api/v1/events?limit=1" -o /dev/null && break; sleep 0.1; done

DEEP=$((ROWS / 2))
printf '%-72s %8s %8s %8s\n' "GET (${ROWS} rows)" p50_ms p99_ms max_ms
for path in \
  "/ui/events" \
  "/ui/events?before=$DEEP" \
  "/ui/events?status=pending" \
  "/ui/events?status=published&before=$DEEP" \
  "/ui/dead" \
  "/ui/dead?error=stream+not+found&topic=topic-0" \
  "/ui/events?topic=topic-3&event_type=OrderPaid" \
  "/ui/events?status=pending&aggregate_id=order-40" \
  "/ui/parked" \
  "/api/v1/events?limit=50" \
  "/ui"; do
  curl -sf "http://127.0.0.1:$PORT$path" -o /dev/null # warm-up
  for _ in $(seq 1 "$REPEAT"); do
    curl -sf -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$PORT$path"
  done | sort -n | awk -v path="$path" '{ t[NR] = $1 * 1000 } END {
    p50 = t[int((NR + 1) * 0.50)]; p99 = t[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1];
    printf "%-72s %8.1f %8.1f %8.1f\n", path, p50, p99, t[NR] }'
done
