//! Shared test support: a fresh database per test on the shared PostgreSQL and MariaDB servers
//! (or a temp SQLite file), event generators, and bus-generic consumers that check per-aggregate
//! order, so the same scenarios can run against any `Bus`.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use courier_core::{Backoff, Bus, Envelope, EventId, Topic};
use courier_outbox::{Enqueue, Outbox, OutboxError, RelayConfig, Store};
use futures::StreamExt;

pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432";
pub const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306";
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// The shared NATS server, with PubAcks timing out after 1 s: a relay with [`fast_config`]'s
/// 2 s lease refuses a bus whose publishes may take longer (see `RelayConfig::validate_with`).
pub async fn nats() -> courier_nats::NatsBus {
    courier_nats::NatsBus::connect(
        courier_nats::NatsConfig::new(NATS_URL).ack_timeout(Duration::from_secs(1)),
    )
    .await
    .expect("nats-server with JetStream on 127.0.0.1:4222 (start it with scripts/services.sh)")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    MySql,
    Sqlite,
}

/// A database created for one test and dropped afterwards (also when the test fails).
pub struct TestDb {
    pub kind: Kind,
    pub url: String,
    name: String,
    _dir: Option<tempfile_dir::TempDir>,
}

/// Minimal temp dir (no extra dependency): removed on drop.
mod tempfile_dir {
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl TestDb {
    /// Creates an empty database, migrates it and returns it with a connected store. Fails
    /// loudly when the server is not reachable: these tests never skip.
    pub async fn create(kind: Kind) -> (Self, Store) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let name = format!("courier_t_{:016x}", rand::random::<u64>());
        let (url, dir) = match kind {
            Kind::Postgres => {
                admin(kind, &format!("CREATE DATABASE {name}")).await;
                (format!("{POSTGRES_URL}/{name}"), None)
            }
            Kind::MySql => {
                admin(kind, &format!("CREATE DATABASE {name}")).await;
                (format!("{MYSQL_URL}/{name}"), None)
            }
            Kind::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).unwrap();
                (format!("sqlite://{}/outbox.db", dir.display()), Some(tempfile_dir::TempDir(dir)))
            }
        };
        let store = Store::connect(&url).await.unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        store.migrate().await.expect("migrate");
        (Self { kind, url, name, _dir: dir }, store)
    }
}

async fn admin(kind: Kind, sql: &str) {
    use sqlx::Connection;
    match kind {
        Kind::Postgres => {
            let url = format!("{POSTGRES_URL}/test");
            let mut conn = sqlx::PgConnection::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required (scripts/services.sh): {e}"));
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        Kind::MySql => {
            let url = format!("{MYSQL_URL}/test");
            let mut conn = sqlx::MySqlConnection::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("MariaDB at {url} is required (scripts/services.sh): {e}"));
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        Kind::Sqlite => {}
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = match self.kind {
            Kind::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            Kind::MySql => format!("DROP DATABASE IF EXISTS {}", self.name),
            Kind::Sqlite => return,
        };
        let kind = self.kind;
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(admin(kind, &sql))
        })
        .join();
    }
}

/// A relay configuration with short timings so failure and takeover tests finish quickly.
pub fn fast_config() -> RelayConfig {
    RelayConfig::default()
        .lease_ttl(Duration::from_secs(2))
        .lease_renew_interval(Duration::from_millis(250))
        .poll_interval(Duration::from_millis(50))
        .sweep_interval(Duration::from_millis(500))
        .backoff(Backoff::default().initial(Duration::from_millis(20)).max(Duration::from_millis(200)))
        .drain_timeout(Duration::from_secs(10))
}

pub fn topic() -> Topic {
    Topic::new(format!("outbox-test-{:08x}", rand::random::<u32>())).unwrap()
}

/// Event `seq` of aggregate `aggregate`; the payload carries the sequence for order checks.
pub fn event(aggregate: &str, seq: u64) -> Envelope {
    Envelope::builder("order", aggregate, "OrderChanged").payload(seq.to_string()).build().unwrap()
}

/// Runs `$body` with `$tx` bound to a fresh transaction of `$store`, committing if `$commit` is
/// true and rolling back otherwise.
#[macro_export]
macro_rules! with_tx {
    ($store:expr, $commit:expr, |$tx:ident| $body:expr) => {{
        let mut $tx = $store.begin().await.unwrap();
        let out = $body;
        if $commit {
            $tx.commit().await.unwrap();
        } else {
            $tx.rollback().await.unwrap();
        }
        out
    }};
}

/// Enqueues `events` to `topic` in one transaction that commits or rolls back.
pub async fn enqueue_tx(
    store: &Store,
    topic: &Topic,
    events: &[Envelope],
    commit: bool,
) -> Result<(), OutboxError> {
    let outbox = Outbox::default();
    let items: Vec<Enqueue<'_>> = events.iter().map(|e| Enqueue::new(e).topic(topic)).collect();
    with_tx!(store, commit, |tx| outbox.enqueue_batch(&mut tx, items.iter().copied()).await.map(drop))
}

/// Enqueues `per_aggregate` events for each of `aggregates` aggregates, `batch` events per
/// transaction, from `writers` concurrent writers (each owns a disjoint set of aggregates, so the
/// enqueue order within an aggregate is well defined while commits interleave).
pub async fn enqueue_many(
    store: &Store,
    topic: &Topic,
    aggregates: usize,
    per_aggregate: u64,
    writers: usize,
) {
    let batch = 100;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, topic) = (store.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let mine: Vec<String> = (w..aggregates).step_by(writers).map(|a| format!("agg-{a}")).collect();
            let mut events = Vec::new();
            for seq in 0..per_aggregate {
                for aggregate in &mine {
                    events.push(event(aggregate, seq));
                }
            }
            for chunk in events.chunks(batch) {
                enqueue_tx(&store, &topic, chunk, true).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// What a consumer saw on a topic.
#[derive(Debug, Default)]
pub struct Consumed {
    pub events: Vec<Envelope>,
    /// Deliveries of an event id seen before.
    pub duplicates: usize,
    /// Events whose sequence was not the next expected one for their aggregate.
    pub order_violations: usize,
}

impl Consumed {
    pub fn distinct(&self) -> usize {
        self.events.len()
    }
}

/// Reads `topic` as a fresh consumer group until `expected` distinct events arrived or
/// `timeout` passed, checking that each aggregate's sequence numbers arrive as 0, 1, 2, ...
pub async fn consume<B: Bus>(bus: &B, topic: &Topic, expected: usize, timeout: Duration) -> Consumed {
    use courier_core::dispatch::Delivery;
    let group = format!("check-{:08x}", rand::random::<u32>());
    let mut stream = bus.subscribe(topic, &group).await.unwrap();
    let mut seen: HashSet<EventId> = HashSet::new();
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut consumed = Consumed::default();
    let deadline = tokio::time::Instant::now() + timeout;
    while consumed.distinct() < expected {
        let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, stream.next()).await else { break };
        let envelope = delivery.envelope().clone();
        delivery.ack().await.unwrap();
        if !seen.insert(envelope.event_id()) {
            consumed.duplicates += 1;
            continue;
        }
        let seq: u64 = std::str::from_utf8(envelope.payload()).unwrap().parse().unwrap();
        let expected_seq = next.entry(envelope.aggregate_id().to_owned()).or_default();
        if seq != *expected_seq {
            tracing::error!(
                aggregate = envelope.aggregate_id(),
                seq,
                expected = *expected_seq,
                "order violation"
            );
            consumed.order_violations += 1;
        }
        *expected_seq = seq + 1;
        consumed.events.push(envelope);
    }
    consumed
}

/// Waits until `check` returns true, polling; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Generates `mod postgres`, `mod mysql` and `mod sqlite`, each with one `#[tokio::test]` per
/// scenario calling `scenario(Kind)`.
#[macro_export]
macro_rules! per_database {
    ($($scenario:ident),* $(,)?) => {
        $crate::per_database!(@db postgres, Postgres, $($scenario),*);
        $crate::per_database!(@db mysql, MySql, $($scenario),*);
        $crate::per_database!(@db sqlite, Sqlite, $($scenario),*);
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

/// A TCP proxy to `target` that can be frozen: while frozen it moves no bytes either way but
/// keeps every connection open, like a network partition between a relay and its database.
pub struct FreezableProxy {
    pub addr: std::net::SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let (target, watch) = (target.to_owned(), frozen.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let ((client_read, client_write), (server_read, server_write)) =
                    (client.into_split(), server.into_split());
                tokio::spawn(pump(client_read, server_write, watch.subscribe()));
                tokio::spawn(pump(server_read, client_write, watch.subscribe()));
            }
        });
        Self { addr, frozen, accept }
    }

    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to`, holding every chunk while the proxy is frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|frozen| !*frozen).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
