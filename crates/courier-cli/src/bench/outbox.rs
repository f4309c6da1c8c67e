//! `courier bench outbox`: three rows from one run, each on a fresh database so leftovers never
//! skew the figures.
//! - `drain`: a backlog of N events enqueued with the relay stopped, then one relay publishes it;
//!   throughput is N over the time until the last broker ACK.
//! - `steady`: open-loop offered load at a fixed rate. Event i is due at `start + i / rate`; a
//!   pool of writers commits each event in its own transaction, or `tx_events` consecutive events
//!   per transaction once the last of them is due (a business write with several events). Its
//!   latency runs from that intended time to its ACK, so a stalled writer or relay shows up as
//!   latency (no coordinated omission).
//! - `baseline`: the relay's claim+mark loop in bare SQL without publishing, the ceiling the
//!   drain rate is compared to.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use courier_core::{Bus, Envelope, EventId, EventIdMap};
use courier_outbox::{AckedEvent, Enqueue, Outbox, Relay, RelayConfig, RelayObserver, Store, TopicMapper};
use sqlx::Connection as _;
use tokio::sync::Notify;

use crate::bench::bus::{drop_topic, fresh_topic, position_key, BusLoad};
use crate::bench::cpu::{Clock, Span};
use crate::report::{peak_rss_bytes, Latency, Row};
use courier_core::redact_url;

/// Events per enqueue transaction when building the backlog (the batch-insert maximum).
const ENQUEUE_BATCH: usize = 1000;

/// The load of one outbox benchmark run.
#[derive(Debug, Clone)]
pub struct OutboxLoad {
    pub events: usize,
    pub payload: usize,
    pub aggregates: usize,
    /// Offered rate of the steady run; `None` means half the measured drain rate.
    pub rate: Option<f64>,
    /// Longest steady run: it offers `min(events, rate * duration)` events.
    pub duration: Duration,
    /// Concurrent writer tasks of the steady run.
    pub writers: usize,
    /// Events per transaction of the steady run.
    pub tx_events: usize,
    /// Pending events parked behind a dead one before the drain and steady runs.
    pub parked: usize,
    pub relay: RelayConfig,
    /// How long to wait for the last ACK of a run before counting the rest as lost.
    pub timeout: Duration,
}

impl OutboxLoad {
    /// The envelopes of a run of `events`, built before its clock starts.
    fn envelopes(&self, events: usize) -> anyhow::Result<Vec<Envelope>> {
        BusLoad { events, payload: self.payload, window: 0, aggregates: self.aggregates }.envelopes()
    }
}

/// Runs drain, steady and baseline against the server or file `db` names (`None`: SQLite in a
/// temporary directory) and `bus`.
pub async fn run<B: Bus>(bus: &B, db: Option<&str>, load: &OutboxLoad) -> anyhow::Result<Vec<Row>> {
    let server = Server::new(db)?;
    let drain = drain(bus, &server, load).await?;
    let rate = load.rate.unwrap_or(drain.throughput_eps / 2.0);
    let steady = steady(bus, &server, load, rate).await?;
    let baseline = baseline(&server, load).await?;
    Ok(vec![drain, steady, baseline])
}

/// The `drain` row, on a fresh database of `server`.
pub async fn drain<B: Bus>(bus: &B, server: &Server, load: &OutboxLoad) -> anyhow::Result<Row> {
    server.with_scratch("drain", |_, store| run_drain(bus, store, load)).await
}

/// The `steady` row at `rate` offered events/s, on a fresh database of `server`.
pub async fn steady<B: Bus>(bus: &B, server: &Server, load: &OutboxLoad, rate: f64) -> anyhow::Result<Row> {
    anyhow::ensure!(rate > 0.0, "the steady rate must be positive, got {rate}");
    server.with_scratch("steady", |url, store| run_steady(bus, url, store, load, rate)).await
}

/// The bare-SQL `baseline` row, on a fresh database of `server`.
pub async fn baseline(server: &Server, load: &OutboxLoad) -> anyhow::Result<Row> {
    server.with_scratch("baseline", |_, store| run_baseline(store, load)).await
}

async fn run_drain<B: Bus>(bus: &B, store: Store, load: &OutboxLoad) -> anyhow::Result<Row> {
    let topic = fresh_topic(bus, "bench-outbox").await?;
    let outbox = Outbox::new(TopicMapper::new().map("bench", topic.clone()));
    let envelopes = load.envelopes(load.events)?;
    park_backlog(&store, &outbox, load.parked).await?;
    let t = Instant::now();
    enqueue_backlog(&store, &outbox, &envelopes).await?;
    eprintln!("drain: enqueued {} events in {:.2}s", envelopes.len(), t.elapsed().as_secs_f64());

    let acks = Acks::new(&envelopes, &[], load.aggregates);
    let clock = Clock::start();
    let start = clock.started_at();
    let relay = Relay::new(store.clone(), bus.clone(), load.relay.clone()).observer(acks.clone()).start();
    acks.wait_all(&relay, start + load.timeout).await;
    let span = clock.stop(acks.last_ack(start));
    relay.shutdown().await.context("stopping the relay")?;
    drop_topic(bus, &topic).await;
    let stats = store.stats().await?;
    eprintln!(
        "drain: relay stopped after {:.2}s; outbox {} published, {} pending, {} dead",
        start.elapsed().as_secs_f64(),
        stats.published,
        stats.pending,
        stats.dead
    );
    Ok(acks.row(row_name(&store, bus), "drain", load, &span, None))
}

async fn run_steady<B: Bus>(
    bus: &B,
    url: String,
    store: Store,
    load: &OutboxLoad,
    rate: f64,
) -> anyhow::Result<Row> {
    let topic = fresh_topic(bus, "bench-outbox").await?;
    let outbox = Outbox::new(TopicMapper::new().map("bench", topic.clone()));
    let events = load.events.min((rate * load.duration.as_secs_f64()).ceil() as usize).max(1);
    let envelopes = Arc::new(load.envelopes(events)?);
    let business = writer_pool(&url, &store, load.writers).await.context("connecting the steady writers")?;
    let tx_events = load.tx_events.clamp(1, load.aggregates.max(1));
    let warm_up = warm_up_envelopes(load.writers.max(1) * tx_events)?;
    park_backlog(&store, &outbox, load.parked).await?;

    let acks = Acks::new(&envelopes, &warm_up, load.aggregates);
    let relay = Relay::new(store.clone(), bus.clone(), load.relay.clone()).observer(acks.clone()).start();
    wait_for_partitions(&relay, load.relay.get_partitions(), load.timeout).await?;
    // Steady state starts warm, as in a service that has been running: every writer connection
    // and the relay have run (and prepared) their statements, and the broker knows the stream.
    let batches = warm_up.chunks(tx_events).map(|chunk| {
        let batch: Vec<Enqueue<'_>> = chunk.iter().map(Enqueue::new).collect();
        let (business, outbox) = (&business, &outbox);
        async move { business.enqueue(outbox, &batch).await }
    });
    futures::future::try_join_all(batches).await.context("enqueueing the warm-up events")?;
    acks.wait_warmed_up(&relay, Instant::now() + load.timeout).await?;

    // One lock per aggregate stands in for the business row lock: an aggregate's events are
    // committed one after another, as enqueue order is only defined for serialised writes.
    let locks: Arc<Vec<tokio::sync::Mutex<()>>> =
        Arc::new((0..load.aggregates.max(1)).map(|_| tokio::sync::Mutex::new(())).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let clock = Clock::start();
    let start = clock.started_at() + Duration::from_millis(20);
    let due = move |i: usize| start + Duration::from_secs_f64(i as f64 / rate);
    let committed: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; events]));
    eprintln!(
        "steady: offering {events} events at {rate:.0}/s with {} writers, {tx_events} per transaction",
        load.writers
    );
    let writers: Vec<_> = (0..load.writers.max(1))
        .map(|_| {
            let (business, outbox, envelopes, locks, next, committed) = (
                business.clone(),
                outbox.clone(),
                Arc::clone(&envelopes),
                Arc::clone(&locks),
                Arc::clone(&next),
                Arc::clone(&committed),
            );
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(tx_events, Ordering::Relaxed);
                    let block = first..(first + tx_events).min(envelopes.len());
                    if block.is_empty() {
                        return anyhow::Ok(());
                    }
                    tokio::time::sleep_until(due(block.end - 1).into()).await;
                    // Locked in index order, so writers holding several never deadlock.
                    let mut serial: Vec<usize> = block.clone().map(|i| i % locks.len()).collect();
                    serial.sort_unstable();
                    let mut guards = Vec::with_capacity(serial.len());
                    for lock in serial {
                        guards.push(locks[lock].lock().await);
                    }
                    let batch: Vec<Enqueue<'_>> = envelopes[block.clone()].iter().map(Enqueue::new).collect();
                    business.enqueue(&outbox, &batch).await?;
                    let now = Instant::now();
                    committed.lock().expect("commit times lock")[block].fill(Some(now));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    let offered = start.elapsed();
    acks.wait_all(&relay, Instant::now() + load.timeout).await;
    let span = clock.stop(acks.last_ack(start));
    relay.shutdown().await.context("stopping the relay")?;
    drop_topic(bus, &topic).await;
    business.close().await;
    let committed = committed.lock().expect("commit times lock");
    let mut to_commit = Latency::default();
    for (i, at) in committed.iter().enumerate() {
        if let Some(at) = at {
            to_commit.record(at.saturating_duration_since(due(i)));
        }
    }
    // An ACK may beat the writer's view of its own commit; that counts as zero.
    let commit_to_ack = acks.latency_from(|i| committed[i]);
    eprintln!(
        "steady: offered for {:.2}s; intended→commit p50 {:.2}ms p99 {:.2}ms; commit→ACK p50 {:.2}ms p99 {:.2}ms",
        offered.as_secs_f64(),
        to_commit.quantile_ms(0.5),
        to_commit.quantile_ms(0.99),
        commit_to_ack.quantile_ms(0.5),
        commit_to_ack.quantile_ms(0.99)
    );
    let e2e = acks.latency_from(|i| Some(due(i)));
    let mut row = acks.row(row_name(&store, bus), "steady", load, &span, Some(e2e));
    row.offered_eps = Some(rate);
    Ok(row)
}

/// The relay's claim+mark loop in bare SQL: claim the next batch of pending rows in id order
/// (with `FOR UPDATE SKIP LOCKED` where the database has it), read what a relay reads, and mark
/// them published with one UPDATE (one DELETE at retention zero), until none remain.
async fn run_baseline(store: Store, load: &OutboxLoad) -> anyhow::Result<Row> {
    let outbox = Outbox::default();
    let envelopes = load.envelopes(load.events)?;
    enqueue_backlog(&store, &outbox, &envelopes).await?;
    let clock = Clock::start();
    // Marks as the relay does: an update, or a delete at retention zero.
    let marked = store
        .bench_claim_and_mark(load.relay.get_batch_size().max(1), load.relay.deletes_published())
        .await?;
    let span = clock.stop(Instant::now());
    let elapsed = span.elapsed;
    Ok(Row {
        backend: store.backend().into(),
        mode: "baseline".into(),
        events: load.events as u64,
        payload_bytes: load.payload as u64,
        throughput_eps: marked as f64 / elapsed.as_secs_f64(),
        lost: (load.events as u64).saturating_sub(marked),
        peak_rss_bytes: peak_rss_bytes(),
        ..Row::default()
    }
    .with_cpu(&span))
}

/// `postgres/nats`: the outbox database and the bus of a row.
fn row_name<B: Bus>(store: &Store, bus: &B) -> String {
    format!("{}/{}", store.backend(), bus.name())
}

/// The business's own pool for `store`'s database, one connection per writer, as an
/// application would have: writers and relay never queue for each other's connections.
async fn writer_pool(url: &str, store: &Store, writers: usize) -> anyhow::Result<Store> {
    // SQLite has a single writer whatever the pool: it keeps the store's pool size.
    if store.backend() == "sqlite" {
        return Ok(Store::connect(url).await?);
    }
    let connections = u32::try_from(writers.max(1)).unwrap_or(u32::MAX);
    Ok(Store::connect_with(url, connections).await?)
}

/// Enqueues `envelopes` in order, a batch per transaction, then refreshes the planner's
/// statistics as the database's auto-analyze would on a long-lived table: a backlog bulk-loaded
/// into an empty table otherwise gets plans for an empty table (on PostgreSQL, a sort of every
/// pending row per claim).
async fn enqueue_backlog(store: &Store, outbox: &Outbox, envelopes: &[Envelope]) -> anyhow::Result<()> {
    for chunk in envelopes.chunks(ENQUEUE_BATCH) {
        let batch: Vec<Enqueue<'_>> = chunk.iter().map(Enqueue::new).collect();
        store.enqueue(outbox, &batch).await.context("enqueueing the benchmark backlog")?;
    }
    store.analyze().await?;
    Ok(())
}

/// The aggregate of [`park_backlog`]'s events, distinct from the measured ones.
const PARKED_AGGREGATE: &str = "parked";

/// Enqueues a dead event and `parked` pending events of one aggregate behind it (none when
/// `parked` is zero): the relay must leave them waiting for an operator while the measured
/// aggregates flow.
async fn park_backlog(store: &Store, outbox: &Outbox, parked: usize) -> anyhow::Result<()> {
    if parked == 0 {
        return Ok(());
    }
    let envelopes = (0..=parked)
        .map(|_| {
            Envelope::builder("bench", PARKED_AGGREGATE, "Parked")
                .build()
                .context("building a parked envelope")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    enqueue_backlog(store, outbox, &envelopes).await?;
    store.bench_bury_head(PARKED_AGGREGATE).await?.context("burying the parked backlog's head")?;
    eprintln!("parked {parked} events behind a dead one");
    Ok(())
}

/// One event per aggregate of its own, so warming up orders nothing the run measures.
fn warm_up_envelopes(count: usize) -> anyhow::Result<Vec<Envelope>> {
    (0..count)
        .map(|i| {
            Envelope::builder("bench", format!("warm-up-{i}"), "WarmedUp")
                .build()
                .context("building a warm-up envelope")
        })
        .collect()
}

/// Waits until the relay works on all its partitions, so the steady load meets a warm relay.
async fn wait_for_partitions(
    relay: &courier_outbox::RelayHandle,
    partitions: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while relay.stats().partitions < u64::from(partitions) {
        anyhow::ensure!(!relay.is_finished(), "the relay stopped before it took its partitions");
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay did not take its partitions within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The first ACK of one event.
#[derive(Debug, Clone, Copy)]
struct Ack {
    row_id: i64,
    position: (i64, u64),
    at: Instant,
}

#[derive(Default)]
struct AckState {
    /// By event index.
    first: Vec<Option<Ack>>,
    distinct: usize,
    duplicates: u64,
    /// Enqueue → ACK as the relay measured it.
    latency: Latency,
    /// Warm-up events acknowledged.
    warmed_up: usize,
}

/// The relay observer of a run: every ACK, checked against the events the run enqueued.
#[derive(Clone)]
struct Acks {
    index: Arc<EventIdMap<EventId, usize>>,
    /// Events published before the measured ones, and not counted.
    warm_up: Arc<EventIdMap<EventId, ()>>,
    aggregates: usize,
    state: Arc<Mutex<AckState>>,
    all_acked: Arc<Notify>,
}

impl RelayObserver for Acks {
    fn acked(&self, event: &AckedEvent<'_>) {
        let at = Instant::now();
        let mut state = self.state.lock().expect("ack state lock");
        if self.warm_up.contains_key(&event.event_id) {
            state.warmed_up += 1;
            if state.warmed_up == self.warm_up.len() {
                self.all_acked.notify_one();
            }
            return;
        }
        state.latency.record(event.enqueue_to_ack);
        let Some(&i) = self.index.get(&event.event_id) else {
            // Nothing but this run's events is in its fresh database.
            tracing::warn!(event_id = %event.event_id, "ACK for an event this run did not enqueue");
            return;
        };
        let again = state.first[i].is_some();
        state.duplicates += u64::from(again || event.duplicate);
        if !again {
            state.first[i] = Some(Ack { row_id: event.row_id, position: position_key(event.position), at });
            state.distinct += 1;
            if state.distinct == state.first.len() {
                self.all_acked.notify_one();
            }
        }
    }
}

impl Acks {
    fn new(envelopes: &[Envelope], warm_up: &[Envelope], aggregates: usize) -> Self {
        let index = envelopes.iter().enumerate().map(|(i, e)| (e.event_id(), i)).collect();
        Self {
            index: Arc::new(index),
            warm_up: Arc::new(warm_up.iter().map(|e| (e.event_id(), ())).collect()),
            aggregates: aggregates.max(1),
            state: Arc::new(Mutex::new(AckState {
                first: vec![None; envelopes.len()],
                ..AckState::default()
            })),
            all_acked: Arc::new(Notify::new()),
        }
    }

    /// Returns once every event was acknowledged, the relay stopped, or `deadline` passed.
    async fn wait_all(&self, relay: &courier_outbox::RelayHandle, deadline: Instant) {
        self.wait(relay, deadline, |state| state.distinct == state.first.len()).await;
    }

    /// Returns once every warm-up event was acknowledged; fails if the relay stopped or
    /// `deadline` passed first.
    async fn wait_warmed_up(
        &self,
        relay: &courier_outbox::RelayHandle,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let count = self.warm_up.len();
        let done = self.wait(relay, deadline, |state| state.warmed_up == count).await;
        anyhow::ensure!(done, "the relay did not publish the {count} warm-up events");
        Ok(())
    }

    /// Waits until `done` holds, the relay stopped, or `deadline` passed; says whether `done`
    /// held.
    async fn wait(
        &self,
        relay: &courier_outbox::RelayHandle,
        deadline: Instant,
        done: impl Fn(&AckState) -> bool,
    ) -> bool {
        loop {
            let notified = self.all_acked.notified();
            if done(&self.state.lock().expect("ack state lock")) {
                return true;
            }
            if relay.is_finished() || Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Events of one aggregate must reach the broker in row-id (enqueue) order: counts events
    /// whose broker position is not after that of the aggregate's previous row.
    fn order_violations(first: &[Option<Ack>], aggregates: usize) -> u64 {
        let mut by_aggregate: Vec<Vec<Ack>> = vec![Vec::new(); aggregates];
        for (i, ack) in first.iter().enumerate() {
            if let Some(ack) = ack {
                by_aggregate[i % aggregates].push(*ack);
            }
        }
        let mut violations = 0;
        for acks in &mut by_aggregate {
            acks.sort_unstable_by_key(|a| a.row_id);
            violations += acks
                .windows(2)
                .filter(|w| w[0].position.0 == w[1].position.0 && w[0].position.1 >= w[1].position.1)
                .count() as u64;
        }
        violations
    }

    /// From `from(event index)` to the event's first ACK.
    fn latency_from(&self, from: impl Fn(usize) -> Option<Instant>) -> Latency {
        let state = self.state.lock().expect("ack state lock");
        let mut latency = Latency::default();
        for (i, ack) in state.first.iter().enumerate() {
            if let (Some(ack), Some(from)) = (ack, from(i)) {
                latency.record(ack.at.saturating_duration_since(from));
            }
        }
        latency
    }

    /// The last first-ACK of a measured event (`start` if none came).
    fn last_ack(&self, start: Instant) -> Instant {
        let state = self.state.lock().expect("ack state lock");
        state.first.iter().flatten().map(|a| a.at).max().unwrap_or(start)
    }

    /// The run's row; throughput is acknowledged events over `span`, the start to the last ACK.
    fn row(&self, backend: String, mode: &str, load: &OutboxLoad, span: &Span, e2e: Option<Latency>) -> Row {
        let state = self.state.lock().expect("ack state lock");
        Row {
            backend,
            mode: mode.into(),
            events: state.first.len() as u64,
            payload_bytes: load.payload as u64,
            throughput_eps: state.distinct as f64 / span.elapsed.as_secs_f64().max(1e-9),
            ack_p50_ms: state.latency.quantile_ms(0.5),
            ack_p99_ms: state.latency.quantile_ms(0.99),
            lost: (state.first.len() - state.distinct) as u64,
            duplicates: state.duplicates,
            order_violations: Self::order_violations(&state.first, self.aggregates),
            e2e_p50_ms: e2e.as_ref().map(|l| l.quantile_ms(0.5)),
            e2e_p99_ms: e2e.as_ref().map(|l| l.quantile_ms(0.99)),
            peak_rss_bytes: peak_rss_bytes(),
            window: Some(load.relay.get_max_in_flight() as u64),
            ..Row::default()
        }
        .with_cpu(span)
    }
}

/// Where fresh databases come from: a directory for SQLite files, or a PostgreSQL or MySQL
/// server on which each run creates (and then drops) a database of its own.
pub enum Server {
    Sqlite(tempfile::TempDir),
    Postgres(String),
    MySql(String),
}

impl Server {
    /// `None` uses SQLite in a temporary directory; a `sqlite://` URL puts the temporary
    /// directory next to its file, so the runs measure that file system.
    pub fn new(db: Option<&str>) -> anyhow::Result<Self> {
        let Some(url) = db else {
            return Ok(Self::Sqlite(tempfile::tempdir().context("creating a temporary directory")?));
        };
        match url.split(':').next().unwrap_or_default() {
            "postgres" | "postgresql" => Ok(Self::Postgres(url.to_owned())),
            "mysql" | "mariadb" => Ok(Self::MySql(url.replacen("mariadb:", "mysql:", 1))),
            "sqlite" => {
                let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
                let path = PathBuf::from(path.split('?').next().unwrap_or_default());
                let dir = match path.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                    _ => PathBuf::from("."),
                };
                Ok(Self::Sqlite(
                    tempfile::tempdir_in(&dir)
                        .with_context(|| format!("creating a temporary directory in {}", dir.display()))?,
                ))
            }
            _ => {
                anyhow::bail!("unsupported database URL {url:?}: expected postgres://, mysql:// or sqlite://")
            }
        }
    }

    /// Runs `f` on a fresh, migrated database (its URL and store), then removes that database
    /// whatever `f` returned.
    async fn with_scratch<F, Fut, T>(&self, mode: &str, f: F) -> anyhow::Result<T>
    where
        F: FnOnce(String, Store) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let name = format!("courier_bench_{}", EventId::new().as_uuid().simple());
        let url = match self {
            Self::Sqlite(dir) => {
                format!("sqlite://{}", dir.path().join(format!("{name}_{mode}.db")).display())
            }
            Self::Postgres(server) => {
                let mut admin =
                    sqlx::PgConnection::connect(server).await.context("connecting to PostgreSQL")?;
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
                admin.close().await?;
                with_database(server, &name)?
            }
            Self::MySql(server) => {
                let mut admin =
                    sqlx::MySqlConnection::connect(server).await.context("connecting to MySQL")?;
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
                admin.close().await?;
                with_database(server, &name)?
            }
        };
        let outcome = async {
            let store =
                Store::connect(&url).await.with_context(|| format!("connecting to {}", redact_url(&url)))?;
            store.migrate().await?;
            let outcome = f(url.clone(), store.clone()).await;
            store.close().await;
            outcome
        }
        .await;
        let dropped = match self {
            Self::Sqlite(_) => Ok(()),
            Self::Postgres(server) => {
                async {
                    let mut admin = sqlx::PgConnection::connect(server).await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await?;
                    admin.close().await
                }
                .await
            }
            Self::MySql(server) => {
                async {
                    let mut admin = sqlx::MySqlConnection::connect(server).await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await?;
                    admin.close().await
                }
                .await
            }
        };
        let row = outcome?;
        dropped.with_context(|| format!("dropping the benchmark database {name}"))?;
        Ok(row)
    }
}

/// `url` with its database (path) replaced by `name`, keeping credentials and parameters.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").with_context(|| format!("database URL {url:?} lacks ://"))? + 3;
    let path = base[authority..].find('/').map_or(base.len(), |i| authority + i);
    Ok(match query {
        Some(query) => format!("{}/{name}?{query}", &base[..path]),
        None => format!("{}/{name}", &base[..path]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_swapped_keeping_credentials_and_parameters() {
        assert_eq!(with_database("postgres://u:p@h:5432/postgres", "x").unwrap(), "postgres://u:p@h:5432/x");
        assert_eq!(with_database("mysql://root@h:3306", "x").unwrap(), "mysql://root@h:3306/x");
        assert_eq!(
            with_database("postgres://h/db?sslmode=disable", "x").unwrap(),
            "postgres://h/x?sslmode=disable"
        );
        assert!(with_database("nonsense", "x").is_err());
    }

    #[test]
    fn order_is_checked_per_aggregate_in_row_id_order() {
        let at = Instant::now();
        let ack = |row_id, sequence| Some(Ack { row_id, position: (0, sequence), at });
        // Two aggregates: events 0, 2 belong to aggregate 0 and 1, 3 to aggregate 1.
        let in_order = [ack(1, 10), ack(2, 5), ack(3, 11), ack(4, 6)];
        assert_eq!(Acks::order_violations(&in_order, 2), 0);
        // Aggregate 1's later row reached the broker first; a missing ACK is no violation.
        let swapped = [ack(1, 10), ack(2, 6), None, ack(4, 5)];
        assert_eq!(Acks::order_violations(&swapped, 2), 1);
    }
}
