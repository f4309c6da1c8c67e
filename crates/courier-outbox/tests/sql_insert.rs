//! Plain SQL inserts as an enqueue path (table contract version 1, README "Enqueueing from any
//! language"): the databases' `courier_outbox_shard` equals Courier's `shard_of`, the insert
//! trigger fills only a missing shard, and rows a Python transaction inserts next to a business
//! row are relayed in order while a rolled-back transaction publishes nothing.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, fast_config, topic, Kind, TestDb};
use courier_core::MemoryBus;
use courier_outbox::{shard_of, EventFilter, Relay};
use rand::{Rng, SeedableRng};

const WAIT: Duration = Duration::from_secs(60);

macro_rules! per_server_database {
    ($($scenario:ident),* $(,)?) => {
        per_server_database!(@db postgres, Postgres, $($scenario),*);
        per_server_database!(@db mysql, MySql, $($scenario),*);
    };
    (@db $module:ident, $kind:ident, $($scenario:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::common::Kind::$kind).await;
                }
            )*
        }
    };
}

per_server_database!(
    shard_function_equals_shard_of,
    trigger_fills_only_a_missing_shard,
    rows_breaking_the_contract_go_dead_naming_the_problem,
    python_transaction_is_relayed_in_order,
);

/// Ids to hash: ASCII and non-ASCII (2-, 3- and 4-byte UTF-8), the empty string, long strings,
/// and random strings over all of Unicode but NUL (which PostgreSQL text cannot hold).
fn ids() -> Vec<String> {
    let mut ids: Vec<String> =
        ["", "order-1", "Order-1", "é", "café", "中文", "😀", "a😀é中z", "tenant:order/1.2_3"]
            .into_iter()
            .map(str::to_owned)
            .collect();
    ids.extend((0..1000).map(|i| format!("order-{i}")));
    ids.extend([1000, 4000].map(|n| "x".repeat(n)));
    ids.push("中文😀é".repeat(500));
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let alphabet: Vec<char> = "aZ09:-./_ éüß中文字😀🚀".chars().collect();
    for _ in 0..1500 {
        let len = rng.gen_range(1..40);
        ids.push((0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect());
    }
    for _ in 0..1500 {
        let len = rng.gen_range(1..20);
        ids.push(std::iter::repeat_with(|| rng.gen_range('\u{1}'..=char::MAX)).take(len).collect::<String>());
    }
    ids
}

/// A pool on the test's database, for the SQL a foreign writer would run.
enum Pool {
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

async fn pool(db: &TestDb) -> Pool {
    match db.kind {
        Kind::Postgres => Pool::Postgres(sqlx::PgPool::connect(&db.url).await.unwrap()),
        Kind::MySql => Pool::MySql(sqlx::MySqlPool::connect(&db.url).await.unwrap()),
        Kind::Sqlite => unreachable!("plain SQL inserts are a PostgreSQL and MySQL/MariaDB contract"),
    }
}

async fn sql_shards(pool: &Pool, ids: &[String]) -> Vec<i64> {
    match pool {
        Pool::Postgres(pool) => sqlx::query_scalar(
            "SELECT courier_outbox_shard(id) FROM UNNEST($1::text[]) WITH ORDINALITY AS u(id, n) \
                 ORDER BY n",
        )
        .bind(ids)
        .fetch_all(pool)
        .await
        .unwrap(),
        Pool::MySql(pool) => {
            let mut shards = Vec::with_capacity(ids.len());
            for id in ids {
                shards.push(
                    sqlx::query_scalar("SELECT courier_outbox_shard(?)")
                        .bind(id)
                        .fetch_one(pool)
                        .await
                        .unwrap(),
                );
            }
            shards
        }
    }
}

async fn shard_function_equals_shard_of(kind: Kind) {
    let (db, _store) = TestDb::create(kind).await;
    let ids = ids();
    let shards = sql_shards(&pool(&db).await, &ids).await;
    let mismatches: Vec<_> = ids
        .iter()
        .zip(&shards)
        .filter(|(id, shard)| shard_of(id) != **shard)
        .map(|(id, shard)| (id.clone(), shard_of(id), *shard))
        .collect();
    assert!(
        mismatches.is_empty(),
        "(id, shard_of, SQL) differ: {:?}",
        &mismatches[..mismatches.len().min(5)]
    );
    assert_eq!(shards.len(), ids.len());
}

/// Inserts a row with the contract's required columns only, plus `shard` when given.
async fn insert(pool: &Pool, event_id: &str, aggregate_id: &str, shard: Option<i64>) {
    const COLUMNS: &str = "INSERT INTO courier_outbox (event_id, topic, aggregate_type, aggregate_id, \
                           event_type, payload, shard)";
    match pool {
        Pool::Postgres(pool) => {
            sqlx::query(&format!("{COLUMNS} VALUES ($1, 't', 'order', $2, 'OrderPlaced', '\\x7b7d', $3)"))
                .bind(event_id)
                .bind(aggregate_id)
                .bind(shard)
                .execute(pool)
                .await
                .map(drop)
        }
        Pool::MySql(pool) => {
            sqlx::query(&format!("{COLUMNS} VALUES (?, 't', 'order', ?, 'OrderPlaced', '{{}}', ?)"))
                .bind(event_id)
                .bind(aggregate_id)
                .bind(shard)
                .execute(pool)
                .await
                .map(drop)
        }
    }
    .unwrap_or_else(|e| panic!("insert {event_id}: {e}"));
}

type Defaults = (i64, String, i64, String, i64, i64, i64);

/// Courier's own enqueue supplies shard (and the trigger must not recompute it); a foreign writer
/// leaves it out, and the bookkeeping columns take their defaults.
async fn trigger_fills_only_a_missing_shard(kind: Kind) {
    let (db, _store) = TestDb::create(kind).await;
    let pool = pool(&db).await;
    insert(&pool, "00000000-0000-4000-8000-000000000001", "order-é", None).await;
    insert(&pool, "00000000-0000-4000-8000-000000000002", "order-é", Some(7)).await;
    let sql = "SELECT shard, headers, event_version, status, attempts, occurred_at_us, created_at_us \
               FROM courier_outbox ORDER BY id";
    let rows: Vec<Defaults> = match &pool {
        Pool::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
        Pool::MySql(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
    };
    let now_us = chrono::Utc::now().timestamp_micros();
    let hour_us = 3_600_000_000;
    for (i, (shard, headers, version, status, attempts, occurred, created)) in rows.iter().enumerate() {
        assert_eq!(*shard, if i == 0 { shard_of("order-é") } else { 7 });
        assert_eq!((headers.as_str(), *version, status.as_str(), *attempts), ("{}", 1, "pending", 0));
        // From the database clock: same machine, so within an hour of ours.
        assert!(
            (now_us - occurred).abs() < hour_us && (now_us - created).abs() < hour_us,
            "{occurred} {created}"
        );
    }
    assert_eq!(rows.len(), 2);
}

/// A foreign writer's mistakes cannot be refused at insert time: the relay makes such a row dead
/// with the reason (for `courier outbox dead`), and other aggregates keep flowing.
async fn rows_breaking_the_contract_go_dead_naming_the_problem(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let rows = [
        ("not-a-uuid", "bad-1", "{}"),
        ("00000000-0000-4000-8000-000000000002", "bad-2", "[\"not\", \"an object\"]"),
        ("00000000-0000-4000-8000-000000000003", "bad-3", "{\"name with spaces\": \"v\"}"),
        ("00000000-0000-4000-8000-000000000004", "good", "{}"),
    ];
    for (event_id, aggregate_id, headers) in rows {
        store
            .execute_raw(&format!(
                "INSERT INTO courier_outbox (event_id, topic, aggregate_type, aggregate_id, event_type, \
                 payload, headers) VALUES ('{event_id}', '{topic}', 'order', '{aggregate_id}', 'OrderPlaced', \
                 '{{}}', '{headers}')"
            ))
            .await
            .unwrap();
    }
    let relay = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    eventually(WAIT, "three dead rows and one published", || async {
        let stats = store.stats().await.unwrap();
        (stats.dead, stats.published) == (3, 1)
    })
    .await;
    relay.shutdown().await.unwrap();
    let mut dead = store.list_dead(&EventFilter::all(), 10).await.unwrap();
    dead.sort_by_key(|d| d.id);
    let errors: Vec<String> = dead.into_iter().map(|d| d.last_error.unwrap_or_default()).collect();
    for (error, expected) in
        errors.iter().zip(["invalid event_id", "invalid headers JSON", "name with spaces"])
    {
        assert!(error.contains(expected), "{error:?} should name {expected:?}");
    }
    assert_eq!(errors.len(), 3);
    let published: Vec<String> = bus.events(&topic).iter().map(|e| e.aggregate_id().to_owned()).collect();
    assert_eq!(published, ["good"]);
}

/// Runs tests/python/enqueue_sql.py: `(committed event ids in order, rolled-back event ids)`.
fn python_enqueue(url: &str, topic: &str, count: usize) -> (Vec<String>, Vec<String>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/enqueue_sql.py");
    let output = Command::new("python3")
        .args([script, url, topic, &count.to_string()])
        .output()
        .expect("python3 is required (scripts/services.sh installs psycopg and PyMySQL)");
    assert!(
        output.status.success(),
        "{script} failed (scripts/services.sh installs psycopg and PyMySQL): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ids = |key: &str| -> Vec<String> {
        report[key].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect()
    };
    (ids("committed"), ids("rolled_back"))
}

async fn python_transaction_is_relayed_in_order(kind: Kind) {
    let (db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let count = 40;
    let (committed, rolled_back) = python_enqueue(&db.url, topic.as_str(), count);
    assert_eq!(committed.len(), count);
    let relay = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    eventually(WAIT, "the Python events to be published", || async {
        store.stats().await.unwrap().published == count as u64
    })
    .await;
    relay.shutdown().await.unwrap();

    let events = bus.events(&topic);
    let ids: Vec<String> = events.iter().map(|e| e.event_id().to_string()).collect();
    // One relay publishes in id order, so the whole transaction arrives in insert order.
    assert_eq!(ids, committed);
    assert!(ids.iter().all(|id| !rolled_back.contains(id)));
    for (seq, event) in events.iter().enumerate() {
        let aggregate = format!("order-{}", 1 + seq % 2);
        assert_eq!(
            (event.aggregate_type(), event.aggregate_id(), event.event_type(), event.event_version()),
            ("order", aggregate.as_str(), "OrderChanged", 2)
        );
        let payload: serde_json::Value = serde_json::from_slice(event.payload()).unwrap();
        assert_eq!(payload, serde_json::json!({"aggregate": aggregate, "seq": seq}));
        let headers: Vec<(&str, &str)> =
            event.headers().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(headers, [("seq", seq.to_string().as_str()), ("source", "python")]);
        assert_eq!(
            event.trace().map(|t| t.traceparent()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.published, stats.dead), (0, count as u64, 0));
}
