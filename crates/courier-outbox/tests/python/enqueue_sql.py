"""Enqueues Courier events with plain SQL from Python, next to a business row, as the README's
"Enqueueing from any language" shows (table contract version 1). Run by tests/sql_insert.rs.

Usage: enqueue_sql.py DATABASE_URL TOPIC COUNT

Commits one transaction holding a business row and COUNT events of two interleaved aggregates,
then rolls back another that holds a business row and events of a third aggregate. Prints
{"committed": [event ids in insert order], "rolled_back": [event ids]} as JSON.
"""

import json
import sys
import uuid
from urllib.parse import unquote, urlparse

# The events' fields the test checks on the bus.
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
EVENT_TYPE = "OrderChanged"
EVENT_VERSION = 2

OUTBOX_INSERT = """
INSERT INTO courier_outbox
    (event_id, topic, aggregate_type, aggregate_id, event_type, event_version, payload, headers,
     traceparent)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


def connect(url):
    """A DB-API connection (not autocommit) to a postgres:// or mysql:// URL."""
    parts = urlparse(url)
    if parts.scheme in ("postgres", "postgresql"):
        import psycopg

        return psycopg.connect(url)
    if parts.scheme in ("mysql", "mariadb"):
        import pymysql

        return pymysql.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=parts.path.lstrip("/"),
            charset="utf8mb4",
        )
    sys.exit(f"unsupported database URL scheme {parts.scheme!r}")


def enqueue(cur, topic, aggregate_id, seq):
    """Inserts one outbox row in the cursor's transaction; returns its event id."""
    event_id = str(uuid.uuid4())
    payload = json.dumps({"aggregate": aggregate_id, "seq": seq}).encode()
    headers = json.dumps({"seq": str(seq), "source": "python"})
    cur.execute(
        OUTBOX_INSERT,
        (event_id, topic, "order", aggregate_id, EVENT_TYPE, EVENT_VERSION, payload, headers,
         TRACEPARENT),
    )
    return event_id


def main():
    url, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    conn = connect(url)
    cur = conn.cursor()
    cur.execute("CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY, total INT NOT NULL)")
    conn.commit()

    committed = []
    cur.execute("INSERT INTO orders (id, total) VALUES (%s, %s)", ("order-1", 100))
    for seq in range(count):
        committed.append(enqueue(cur, topic, f"order-{1 + seq % 2}", seq))
    conn.commit()

    rolled_back = []
    cur.execute("INSERT INTO orders (id, total) VALUES (%s, %s)", ("order-3", 300))
    for seq in range(3):
        rolled_back.append(enqueue(cur, topic, "order-3", seq))
    conn.rollback()

    conn.close()
    print(json.dumps({"committed": committed, "rolled_back": rolled_back}))


if __name__ == "__main__":
    main()
