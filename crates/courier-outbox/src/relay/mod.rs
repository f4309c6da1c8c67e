//! The relay: publishes pending outbox rows to a [`Bus`] and marks a row published only when
//! the broker acknowledged it.
//!
//! # Ordering
//! Events of one aggregate (same `aggregate_id`) reach the broker in enqueue (`id`) order. The
//! relay pipelines publishes *across* aggregates but keeps **at most one event per aggregate in
//! flight**: event N+1 is handed to the broker only after N was acknowledged. Pipelining within
//! an aggregate cannot keep order on every broker: if N fails while N+1 is acknowledged, the
//! retry of N lands after N+1. When an event fails, its aggregate is *parked*: its queued events
//! are dropped from memory and the relay resumes from the failed event once its backoff has
//! passed. A dead event keeps its aggregate parked (by default) until an operator requeues or
//! discards it, so consumers never see an aggregate's history with a hole in it.
//!
//! # Several relays
//! Aggregates are hashed into a fixed number of partitions (`shard % partitions`); each
//! partition is leased to one relay at a time (`courier_outbox_leases`, taken with
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL and MySQL). Relays announce themselves in
//! `courier_outbox_relays` and each takes a fair share; one that holds too many drains a
//! partition (waits for its in-flight ACKs and marks) before releasing it. A crashed relay's
//! leases expire after `lease_ttl` and the others take its partitions over, re-publishing what it
//! had published but not yet marked (brokers drop these by event id). The claim query re-checks
//! the lease in the database, and a relay that cannot renew stops publishing before its lease
//! can expire.

mod aggregate;
mod cursor;
mod engine;
mod fencing;
mod lease;
mod low_water;
mod partitions;
mod refused;
mod submit;
mod subtasks;
mod sweep;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Backoff, Bus, Error, EventId, Position, PublisherConfig, Topic};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{OutboxError, Store};

/// The shortest lease the relay accepts: it renews at most every fifth of it, and each renewal
/// is a database round trip that must fit in a quarter of it.
const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// Relay settings: `RelayConfig::default()`, then the setters of what to change (each documents
/// its default).
///
/// ```
/// use std::time::Duration;
/// use courier_outbox::RelayConfig;
///
/// let config = RelayConfig::default().lease_ttl(Duration::from_secs(30)).retention(Some(Duration::ZERO));
/// assert!(config.deletes_published());
/// ```
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub(crate) instance_id: String,
    pub(crate) batch_size: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) park_on_dead: bool,
    pub(crate) partitions: u32,
    pub(crate) lease_ttl: Duration,
    pub(crate) lease_renew_interval: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) busy_poll_interval: Duration,
    pub(crate) idle_after: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) listen: bool,
    pub(crate) retention: Option<Duration>,
    pub(crate) purge_interval: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) connections: u32,
    /// Set by [`Relay::mark_gate`], not by users of the config.
    #[cfg(feature = "testing")]
    pub(crate) mark_gate: Option<crate::testing::MarkGate>,
}

impl RelayConfig {
    /// Names this relay in lease rows and logs; must be unique per running relay.
    /// Default `relay-<pid>-<random>`.
    pub fn instance_id(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = instance_id.into();
        self
    }

    /// Rows read per claim query: larger batches mean fewer queries under load, more rows held
    /// in memory. Default 1000.
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows;
        self
    }

    /// Events handed to the broker and not yet acknowledged (the publisher window): raise it
    /// when the broker's round trip, not the database, limits throughput. Default 1024.
    pub fn max_in_flight(mut self, events: usize) -> Self {
        self.max_in_flight = events;
        self
    }

    /// Publish attempts before a row is dead and its aggregate waits for an operator.
    /// Default 10.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Delay before re-publishing a failed event. Default [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Whether a dead event keeps later events of its aggregate waiting until it is requeued or
    /// discarded (`true`, so consumers never see a history with a hole), or they are published
    /// without it. Default `true`.
    pub fn park_on_dead(mut self, park: bool) -> Self {
        self.park_on_dead = park;
        self
    }

    /// Partitions of the aggregate space, the unit of work shared between relays: at most this
    /// many relays share the work. Fixed per database at the first start; every relay must use
    /// the same value. Default 16.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// How long a partition lease lasts without renewal: how soon other relays take over the
    /// work of a crashed one. Default 10 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How often leases are renewed and rebalanced; capped at `lease_ttl / 5`, so a relay
    /// that cannot renew stops before its lease expires. Default 2 s.
    pub fn lease_renew_interval(mut self, interval: Duration) -> Self {
        self.lease_renew_interval = interval;
        self
    }

    /// The longest wait between looks for new rows when no wake-up arrives. Between
    /// `busy_poll_interval` and this, the relay waits a tenth of the time since rows last
    /// arrived: a short stall of the writers costs little latency, a long idle little database
    /// load. Default 200 ms.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How often a busy relay looks for new rows: while rows keep arriving it polls instead of
    /// waiting for NOTIFY, which would serialise the writers' commits. Default 2 ms.
    pub fn busy_poll_interval(mut self, interval: Duration) -> Self {
        self.busy_poll_interval = interval;
        self
    }

    /// How long without new rows before the relay counts as idle: on PostgreSQL with
    /// [`listen`](Self::listen), it then asks writers to NOTIFY it. Default 100 ms.
    pub fn idle_after(mut self, after: Duration) -> Self {
        self.idle_after = after;
        self
    }

    /// How often to re-read from the oldest pending row, catching rows whose transaction
    /// committed after rows with higher ids had been read. Also how far back a caught-up relay
    /// looks for such rows at each poll: one whose transaction took less than this from insert
    /// to commit is found at the first poll after its commit, a longer one by the next sweep.
    /// Default 2 s.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// On PostgreSQL, let commits wake an idle relay with NOTIFY instead of waiting up to
    /// `poll_interval`. Writers notify only while some relay is idle. Default `true`.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Delete published rows this long after publication; `None` keeps them. Zero deletes each
    /// acknowledged row in the mark itself instead of updating it, which costs the database
    /// a fraction of the write work (the update rewrites the whole row and its index entries);
    /// an idempotency key then refuses duplicates only until its event is published.
    /// Default 24 h.
    pub fn retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// How often the retention purge runs. Default 60 s.
    pub fn purge_interval(mut self, interval: Duration) -> Self {
        self.purge_interval = interval;
        self
    }

    /// How long a graceful shutdown waits for in-flight ACKs and their marks; what is still
    /// unacknowledged then stays pending for the next relay. Default 30 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Database connections of the relay's own pool (claims, marks, leases, purge; LISTEN uses
    /// one more), separate from the [`Store`]'s pool so the relay never queues behind business
    /// transactions. At least 2. Default 4.
    pub fn connections(mut self, connections: u32) -> Self {
        self.connections = connections;
        self
    }

    /// Rows read per claim query.
    pub fn get_batch_size(&self) -> usize {
        self.batch_size
    }

    /// Events in flight to the broker at most.
    pub fn get_max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Partitions of the aggregate space.
    pub fn get_partitions(&self) -> u32 {
        self.partitions
    }

    /// Whether marks delete acknowledged rows instead of keeping them (retention zero).
    pub fn deletes_published(&self) -> bool {
        self.retention.is_some_and(|r| r.is_zero())
    }

    /// Refuses settings the relay cannot run with, naming the setting: zero sizes, zero
    /// intervals (a zero lease would leave the relay holding no partition, silently idle), and
    /// intervals that contradict each other. [`Relay::start`] checks this too; call it first to
    /// refuse a bad configuration before anything starts.
    pub fn validate(&self) -> Result<(), OutboxError> {
        let invalid =
            |key: &str, why: String| Err(OutboxError::Config(format!("relay setting {key}: {why}")));
        if self.lease_ttl < MIN_LEASE_TTL {
            return invalid(
                "lease_ttl",
                format!(
                    "{:?} is shorter than {MIN_LEASE_TTL:?}: leases must outlast a renewal round trip to the database",
                    self.lease_ttl
                ),
            );
        }
        for (key, value) in [
            ("batch_size", self.batch_size as u64),
            ("max_in_flight", self.max_in_flight as u64),
            ("max_attempts", u64::from(self.max_attempts)),
            ("partitions", u64::from(self.partitions)),
            ("connections", u64::from(self.connections)),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1, got 0".into());
            }
        }
        for (key, value) in [
            ("lease_renew_interval", self.lease_renew_interval),
            ("poll_interval", self.poll_interval),
            ("busy_poll_interval", self.busy_poll_interval),
            ("sweep_interval", self.sweep_interval),
            ("purge_interval", self.purge_interval),
        ] {
            if value.is_zero() {
                return invalid(key, "must be longer than zero".into());
            }
        }
        if self.busy_poll_interval > self.poll_interval {
            return invalid(
                "busy_poll_interval",
                format!(
                    "{:?} is longer than poll_interval ({:?})",
                    self.busy_poll_interval, self.poll_interval
                ),
            );
        }
        Ok(())
    }

    /// [`validate`](Self::validate), and checks that the lease leaves time to publish on a bus
    /// whose verdicts take up to `verdict_timeout`
    /// ([`Publisher::verdict_timeout`](courier_core::Publisher::verdict_timeout)): the relay
    /// hands an event to the broker only while its lease outlasts that, so that no event of a
    /// partition is still on its way when another relay can take the partition over.
    /// [`Relay::start`] checks this too.
    pub fn validate_with(&self, verdict_timeout: Duration) -> Result<(), OutboxError> {
        self.validate()?;
        let renew_interval = self.lease_renew_interval.min(self.lease_ttl / 5);
        let publish_time = fencing::PublishFence::publish_time(self.lease_ttl, renew_interval);
        if verdict_timeout > publish_time {
            return Err(OutboxError::Config(format!(
                "relay setting lease_ttl: {:?} is too short for this bus, whose publishes take up to {verdict_timeout:?} \
                 to be acknowledged or time out; a lease must outlast a publish, a renewal interval ({renew_interval:?}) \
                 and a tenth of itself: raise lease_ttl or lower the bus's publish timeout",
                self.lease_ttl
            )));
        }
        Ok(())
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            instance_id: format!("relay-{}-{:08x}", std::process::id(), rand::random::<u32>()),
            batch_size: 1000,
            max_in_flight: 1024,
            max_attempts: 10,
            backoff: Backoff::default(),
            park_on_dead: true,
            partitions: 16,
            lease_ttl: Duration::from_secs(10),
            lease_renew_interval: Duration::from_secs(2),
            poll_interval: Duration::from_millis(200),
            busy_poll_interval: Duration::from_millis(2),
            idle_after: Duration::from_millis(100),
            sweep_interval: Duration::from_secs(2),
            listen: true,
            retention: Some(Duration::from_secs(24 * 3600)),
            purge_interval: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            connections: 4,
            #[cfg(feature = "testing")]
            mark_gate: None,
        }
    }
}

/// Receives relay events, e.g. to feed metrics (commit→ACK latency histogram, outcome counters).
/// Called on the relay's task: keep it quick and non-blocking.
pub trait RelayObserver: Send + Sync + 'static {
    /// The broker acknowledged an event; its row is marked published in the next mark.
    fn acked(&self, _event: &AckedEvent<'_>) {}
    /// A publish attempt failed; the row is retried later or is dead.
    fn failed(&self, _event: &FailedEvent<'_>) {}
}

/// The observer that ignores everything.
impl RelayObserver for () {}

/// An event the broker acknowledged.
#[derive(Debug)]
#[non_exhaustive]
pub struct AckedEvent<'a> {
    /// The outbox row id.
    pub row_id: i64,
    /// The event's id.
    pub event_id: EventId,
    /// The topic it was published to.
    pub topic: &'a Topic,
    /// Its aggregate.
    pub aggregate_id: &'a str,
    /// Where the broker stored it.
    pub position: &'a Position,
    /// The broker already had this event (a re-publish after a takeover or lost ACK).
    pub duplicate: bool,
    /// From the enqueue (the insert, just before its commit) to the broker's ACK.
    pub enqueue_to_ack: Duration,
}

/// A failed publish attempt.
#[derive(Debug)]
#[non_exhaustive]
pub struct FailedEvent<'a> {
    /// The outbox row id.
    pub row_id: i64,
    /// Its aggregate, parked until the retry (or, dead, until an operator acts).
    pub aggregate_id: &'a str,
    /// Why the attempt failed.
    pub error: &'a Error,
    /// Attempts made so far, including this one.
    pub attempts: u32,
    /// The row is dead: non-retryable error or out of attempts.
    pub dead: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    published: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
    in_flight: AtomicU64,
    partitions: AtomicU64,
}

/// A snapshot of a relay's counters since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Events acknowledged by the broker (including duplicates).
    pub published: u64,
    /// Acknowledged events the broker reported as duplicates.
    pub duplicates: u64,
    /// Failed publish attempts (NACKs, ACK errors and timeouts).
    pub failed: u64,
    /// Rows that went dead.
    pub dead: u64,
    /// Events handed to the broker awaiting their ACK right now.
    pub in_flight: u64,
    /// Partitions this relay currently works on.
    pub partitions: u64,
}

impl Counters {
    fn snapshot(&self) -> RelayStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStats {
            published: get(&self.published),
            duplicates: get(&self.duplicates),
            failed: get(&self.failed),
            dead: get(&self.dead),
            in_flight: get(&self.in_flight),
            partitions: get(&self.partitions),
        }
    }
}

/// Publishes an outbox [`Store`] to a [`Bus`]. See the [module docs](self) for the guarantees.
///
/// ```no_run
/// # async fn example() -> Result<(), courier_outbox::OutboxError> {
/// use courier_core::MemoryBus;
/// use courier_outbox::{Relay, RelayConfig, Store};
///
/// let store = Store::connect("sqlite://outbox.db").await?;
/// store.migrate().await?;
/// let relay = Relay::new(store, MemoryBus::default(), RelayConfig::default()).start();
/// // ... later, e.g. on SIGTERM:
/// relay.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct Relay<B> {
    store: Store,
    bus: B,
    config: RelayConfig,
    observer: Arc<dyn RelayObserver>,
}

impl<B: Bus> Relay<B> {
    /// A relay publishing `store`'s pending events to `bus`; [`start`](Self::start) runs it.
    pub fn new(store: Store, bus: B, config: RelayConfig) -> Self {
        Self { store, bus, config, observer: Arc::new(()) }
    }

    /// Reports every ACK and failed attempt to `observer`, e.g. for metrics. Default: none.
    pub fn observer(mut self, observer: impl RelayObserver) -> Self {
        self.observer = Arc::new(observer);
        self
    }

    /// Makes the relay's outcome writes wait while `gate` is held, to stop it between the
    /// broker's ACK and the row's mark in a test (feature `testing`; see
    /// [`testing`](crate::testing)). Default: writes never wait.
    #[cfg(feature = "testing")]
    pub fn mark_gate(mut self, gate: &crate::testing::MarkGate) -> Self {
        self.config.mark_gate = Some(gate.clone());
        self
    }

    /// Starts the relay on the current Tokio runtime.
    pub fn start(self) -> RelayHandle {
        let (stop_tx, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let instance_id = self.config.instance_id.clone();
        let mut config = self.config;
        config.lease_renew_interval = config.lease_renew_interval.min(config.lease_ttl / 5);
        let publisher = self.bus.publisher(
            PublisherConfig::default()
                .window(config.max_in_flight.max(1))
                .close_timeout(config.drain_timeout),
        );
        let task = tokio::spawn(engine::run(
            self.store.dedicated(config.connections.max(2)),
            publisher,
            config,
            self.observer,
            Arc::clone(&counters),
            stop_rx,
        ));
        RelayHandle { stop: stop_tx, task, counters, instance_id }
    }
}

/// A running relay.
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), OutboxError>>,
    counters: Arc<Counters>,
    instance_id: String,
}

impl RelayHandle {
    /// The name this relay uses in lease rows and logs.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The relay's counters since it started.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Whether the relay stopped (after shutdown, or on a fatal error that
    /// [`shutdown`](Self::shutdown) returns).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops claiming, waits for every in-flight ACK and its mark (up to the drain timeout),
    /// then releases this relay's leases so others take over at once.
    pub async fn shutdown(self) -> Result<(), OutboxError> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| OutboxError::Stopped(e.to_string()))?
    }

    /// Kills the relay like a crash would: nothing is drained or released, so its partitions
    /// are taken over only when their leases expire. For failure tests and emergencies.
    pub fn abort(&self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(config: RelayConfig) -> String {
        config.validate().expect_err("refused").to_string()
    }

    #[test]
    fn the_defaults_are_valid() {
        RelayConfig::default().validate().unwrap();
    }

    #[test]
    fn nonsensical_settings_are_refused_naming_the_setting() {
        let base = RelayConfig::default;
        assert!(refusal(base().lease_ttl(Duration::ZERO))
            .contains("relay setting lease_ttl: 0ns is shorter than 1s"));
        assert!(refusal(base().batch_size(0)).contains("relay setting batch_size: must be at least 1"));
        assert!(refusal(base().poll_interval(Duration::ZERO)).contains("relay setting poll_interval"));
        assert!(refusal(base().busy_poll_interval(Duration::from_secs(1)))
            .contains("relay setting busy_poll_interval"));
    }

    #[test]
    fn a_lease_shorter_than_a_publish_is_refused() {
        let ttl = Duration::from_secs(10);
        RelayConfig::default().lease_ttl(ttl).validate_with(Duration::from_secs(5)).unwrap();
        let refused = RelayConfig::default().lease_ttl(ttl).validate_with(Duration::from_secs(8));
        let message = refused.expect_err("refused").to_string();
        assert!(message.contains("relay setting lease_ttl: 10s is too short for this bus"), "{message}");
        assert!(message.contains("up to 8s"), "{message}");
    }
}
