//! Publish→handler latency for `courier bench`: a consumer group reads the benchmark topic
//! through the dispatch engine while the publisher writes it, and checks each event against the
//! load: every event handled, once, in per-aggregate order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_core::dispatch::{self, DispatchConfig, DispatchStats, Handler};
use courier_core::{
    Bus, DeadLetterTopic, Envelope, EventId, EventIdMap, HandlerError, PublisherConfig, Topic,
};
use tokio::sync::Notify;

use super::bus::{drop_topic, fresh_topic, BusLoad};
use crate::report::{Latency, Row};

/// How long the consumer may trail the last ACK before the events it has not seen count as lost.
const GRACE: Duration = Duration::from_secs(60);

/// When each event was handed to the publisher, in nanoseconds after `base` plus one (zero: not
/// yet), shared with the handlers without a lock.
#[derive(Clone)]
pub struct Sent {
    base: Instant,
    at: Arc<Vec<AtomicU64>>,
}

impl Sent {
    pub fn new(events: usize) -> Self {
        Self { base: Instant::now(), at: Arc::new((0..events).map(|_| AtomicU64::new(0)).collect()) }
    }

    /// Event `i` was handed over at `at`.
    pub fn mark(&self, i: usize, at: Instant) {
        let nanos = u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX - 1);
        self.at[i].store(nanos + 1, Ordering::Release);
    }

    fn at(&self, i: usize) -> Option<Instant> {
        match self.at[i].load(Ordering::Acquire) {
            0 => None,
            nanos => Some(self.base + Duration::from_nanos(nanos - 1)),
        }
    }
}

/// What the consumer saw, checked against the load: event `i` belongs to aggregate
/// `i % aggregates` and is that aggregate's `i / aggregates`-th event.
#[derive(Default)]
pub struct Seen {
    handled: Vec<bool>,
    /// Per aggregate, the sequence number expected next.
    next: Vec<u64>,
    distinct: usize,
    pub duplicates: u64,
    pub order_violations: u64,
    /// Events on the run's fresh topic that the run did not publish.
    foreign: u64,
    latency: Latency,
    /// When the last new event was handled.
    last: Option<Instant>,
    /// When the first event was handed to the publisher.
    first_sent: Option<Instant>,
}

impl Seen {
    fn new(events: usize, aggregates: usize) -> Self {
        Self { handled: vec![false; events], next: vec![0; aggregates.max(1)], ..Self::default() }
    }

    /// Records event `i`, handled at `at`, `latency` after it was published; says whether every
    /// event has now been seen.
    fn record(&mut self, i: usize, at: Instant, latency: Option<Duration>) -> bool {
        if std::mem::replace(&mut self.handled[i], true) {
            self.duplicates += 1;
            return false;
        }
        let aggregates = self.next.len();
        let sequence = (i / aggregates) as u64;
        let next = &mut self.next[i % aggregates];
        self.order_violations += u64::from(sequence != *next);
        *next = sequence + 1;
        if let Some(latency) = latency {
            self.latency.record(latency);
        }
        self.last = Some(at);
        self.distinct += 1;
        self.distinct == self.handled.len()
    }

    pub fn lost(&self) -> u64 {
        (self.handled.len() - self.distinct) as u64
    }

    /// Adds the consumer's view to the publisher's row: an event is lost if either side missed
    /// it, and duplicates and order violations of both sides count.
    pub fn apply(&self, row: &mut Row) {
        row.lost = row.lost.max(self.lost());
        row.duplicates += self.duplicates;
        row.order_violations += self.order_violations;
        row.e2e_p50_ms = Some(self.latency.quantile_ms(0.5));
        row.e2e_p99_ms = Some(self.latency.quantile_ms(0.99));
        row.e2e_throughput_eps = self.throughput_eps();
    }

    /// Events handled per second from the first publish to the last event handled: when it is
    /// below the publishing throughput, the group falls behind and publish→handler latency is
    /// mostly the backlog it leaves.
    fn throughput_eps(&self) -> Option<f64> {
        let span = self.last?.checked_duration_since(self.first_sent?)?;
        Some(self.distinct as f64 / span.as_secs_f64().max(1e-9))
    }
}

#[derive(Clone)]
struct Verifier {
    index: Arc<EventIdMap<EventId, usize>>,
    /// The event published before the measured ones, to know the group receives.
    primer: EventId,
    primed: Arc<Notify>,
    sent: Sent,
    seen: Arc<Mutex<Seen>>,
    complete: Arc<Notify>,
}

impl Handler for Verifier {
    fn handle(
        &self,
        envelope: &Envelope,
    ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send {
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("seen lock");
        match self.index.get(&envelope.event_id()) {
            Some(&i) => {
                let latency = self.sent.at(i).map(|at| now.saturating_duration_since(at));
                if seen.first_sent.is_none() {
                    seen.first_sent = self.sent.at(0);
                }
                if seen.record(i, now, latency) {
                    self.complete.notify_one();
                }
            }
            None if envelope.event_id() == self.primer => self.primed.notify_one(),
            // Nothing else is written to the run's fresh topic.
            None => seen.foreign += 1,
        }
        std::future::ready(Ok(()))
    }
}

/// A consumer group reading a benchmark topic in the background.
pub struct Consumer {
    task: tokio::task::JoinHandle<DispatchStats>,
    seen: Arc<Mutex<Seen>>,
    published: Arc<Notify>,
    dead_letters: Topic,
}

impl Consumer {
    /// Subscribes group `bench` to `topic` and starts handling; latencies are measured from the
    /// times `sent` records. Returns once the group has handled a priming event of its own, so
    /// joining the group (a Kafka rebalance takes hundreds of milliseconds) is not measured.
    pub async fn start<B: Bus>(
        bus: &B,
        topic: &Topic,
        load: &BusLoad,
        index: EventIdMap<EventId, usize>,
        sent: Sent,
    ) -> anyhow::Result<Self> {
        let dead_letters = fresh_topic(bus, "bench-dlq").await?;
        let source = bus.subscribe(topic, "bench").await?;
        let primer = Envelope::builder("bench", "priming", "Priming").build()?;
        let verifier = Verifier {
            index: Arc::new(index),
            primer: primer.event_id(),
            primed: Arc::new(Notify::new()),
            sent,
            seen: Arc::new(Mutex::new(Seen::new(load.events, load.aggregates))),
            complete: Arc::new(Notify::new()),
        };
        let (seen, complete, primed) =
            (Arc::clone(&verifier.seen), Arc::clone(&verifier.complete), Arc::clone(&verifier.primed));
        let published = Arc::new(Notify::new());
        let shutdown = {
            let published = Arc::clone(&published);
            async move {
                tokio::select! {
                    () = complete.notified() => {}
                    () = async { published.notified().await; tokio::time::sleep(GRACE).await } => {}
                }
            }
        };
        let dead_letter =
            DeadLetterTopic::new(bus.publisher(PublisherConfig::default()), dead_letters.clone());
        let task = tokio::spawn(dispatch::dispatch(
            source,
            verifier,
            dead_letter,
            DispatchConfig::default(),
            shutdown,
        ));
        let publisher = bus.publisher(PublisherConfig::default());
        publisher.publish(topic, primer).await?.await?;
        publisher.close().await?;
        tokio::time::timeout(GRACE, primed.notified()).await.map_err(|_| {
            anyhow::anyhow!("the consumer group did not receive its priming event within {GRACE:?}")
        })?;
        Ok(Self { task, seen, published, dead_letters })
    }

    /// Waits until every event was handled, or [`GRACE`] after this call, then stops the
    /// consumer and returns what it saw.
    pub async fn finish<B: Bus>(self, bus: &B) -> anyhow::Result<Seen> {
        self.published.notify_one();
        let stats = self.task.await?;
        drop_topic(bus, &self.dead_letters).await;
        anyhow::ensure!(
            stats.dead_lettered == 0,
            "the consumer dead-lettered {} events",
            stats.dead_lettered
        );
        let seen = std::mem::take(&mut *self.seen.lock().expect("seen lock"));
        anyhow::ensure!(
            seen.foreign == 0,
            "the group received {} events this run did not publish",
            seen.foreign
        );
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_events_are_clean() {
        let mut seen = Seen::new(4, 2);
        let now = Instant::now();
        // Aggregate 0 gets events 0 and 2, aggregate 1 events 1 and 3.
        assert!(!seen.record(1, now, None));
        assert!(!seen.record(0, now, None));
        assert!(!seen.record(2, now, None));
        assert!(seen.record(3, now, None));
        assert_eq!((seen.lost(), seen.duplicates, seen.order_violations), (0, 0, 0));
    }

    #[test]
    fn duplicates_reorders_and_losses_are_counted() {
        let mut seen = Seen::new(6, 2);
        let now = Instant::now();
        seen.record(2, now, None); // aggregate 0's second event before its first
        seen.record(0, now, None);
        seen.record(0, now, None); // again
        seen.record(1, now, None);
        assert_eq!(seen.duplicates, 1);
        assert_eq!(seen.order_violations, 2, "2 came early, then 0 came late");
        assert_eq!(seen.lost(), 3);
    }

    #[test]
    fn the_consumer_view_joins_the_publisher_row() {
        let mut seen = Seen::new(2, 1);
        let start = Instant::now();
        seen.first_sent = Some(start);
        seen.record(0, start + Duration::from_millis(500), Some(Duration::from_millis(2)));
        let mut row = Row { lost: 0, duplicates: 1, ..Row::default() };
        seen.apply(&mut row);
        assert_eq!((row.lost, row.duplicates), (1, 1));
        assert_eq!(row.e2e_p50_ms, Some(2.0));
        assert_eq!(row.e2e_throughput_eps, Some(2.0), "one event in half a second");
    }

    #[test]
    fn sent_times_round_trip() {
        let sent = Sent::new(2);
        let at = Instant::now() + Duration::from_millis(5);
        sent.mark(1, at);
        assert_eq!(sent.at(0), None);
        assert_eq!(sent.at(1), Some(at));
    }
}
