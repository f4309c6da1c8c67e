//! `courier bench bus`: publish N events through a Courier publisher and read every per-event
//! verdict from the results stream; throughput is events over the time until the last verdict.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use courier_core::wire::{self, HeaderStyle, WireMode};
use courier_core::{Bus, Envelope, EventId, EventIdMap, Position, PublisherConfig, Topic, TopicConfig};

use super::cpu::{Clock, Span};
use super::e2e::{Consumer, Sent};
use crate::report::{peak_rss_bytes, Latency, Row};

/// The load of one bus benchmark run.
#[derive(Debug, Clone)]
pub struct BusLoad {
    pub events: usize,
    pub payload: usize,
    pub window: usize,
    pub aggregates: usize,
}

impl BusLoad {
    /// The events to publish, built before the clock starts: `i` belongs to aggregate
    /// `i % aggregates`, all sharing one payload buffer.
    pub fn envelopes(&self) -> anyhow::Result<Vec<Envelope>> {
        let payload = Bytes::from(vec![b'x'; self.payload]);
        (0..self.events)
            .map(|i| {
                Envelope::builder("bench", format!("agg-{}", i % self.aggregates.max(1)), "Benchmarked")
                    .payload(payload.clone())
                    .build()
                    .context("building benchmark envelope")
            })
            .collect()
    }
}

/// The CloudEvents headers Courier sends for each of `envelopes`, as name/value pairs: what a
/// bare-client baseline sends to carry the same messages (made before the clock starts, as
/// Courier's envelopes are).
pub fn cloudevents_headers(envelopes: &[Envelope], style: HeaderStyle) -> Vec<Vec<(String, String)>> {
    envelopes
        .iter()
        .map(|envelope| {
            let mut headers = Vec::new();
            wire::encode(envelope, WireMode::CloudEvents, style, &mut headers);
            headers
        })
        .collect()
}

/// A fresh topic for one run, provisioned on `bus`.
pub async fn fresh_topic<B: Bus>(bus: &B, prefix: &str) -> anyhow::Result<Topic> {
    let topic = Topic::new(format!("{prefix}-{}", EventId::new().as_uuid().simple()))?;
    bus.provision(&TopicConfig::new(topic.clone())).await.with_context(|| format!("provisioning {topic}"))?;
    Ok(topic)
}

/// Deletes a topic made by [`fresh_topic`], so runs leave no data behind on the broker. A
/// failure is reported but not fatal: the run's figures stand.
pub async fn drop_topic<B: Bus>(bus: &B, topic: &Topic) {
    if let Err(err) = bus.delete_topic(topic).await {
        eprintln!("could not delete topic {topic}: {err}");
    }
}

/// Per-event outcome bookkeeping shared by Courier and baseline runs.
pub struct Tally {
    positions: Vec<Option<(i64, u64)>>,
    aggregates: usize,
    pub ack: Latency,
    pub failures: u64,
    pub first_error: Option<String>,
    pub duplicates: u64,
}

impl Tally {
    pub fn new(load: &BusLoad) -> Self {
        Self {
            positions: vec![None; load.events],
            aggregates: load.aggregates.max(1),
            ack: Latency::default(),
            failures: 0,
            first_error: None,
            duplicates: 0,
        }
    }

    /// Records event `index`'s verdict; a second success for one event counts as a duplicate.
    pub fn success(&mut self, index: usize, position: (i64, u64), broker_duplicate: bool, latency: Duration) {
        self.ack.record(latency);
        let again = self.positions[index].replace(position).is_some();
        self.duplicates += u64::from(again || broker_duplicate);
    }

    pub fn failure(&mut self, error: impl ToString, latency: Duration) {
        self.ack.record(latency);
        self.failures += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }

    /// Events with no successful verdict.
    pub fn lost(&self) -> u64 {
        self.positions.iter().filter(|p| p.is_none()).count() as u64
    }

    /// Events stored before an earlier-published event of the same aggregate.
    pub fn order_violations(&self) -> u64 {
        let mut last: Vec<Option<(i64, u64)>> = vec![None; self.aggregates];
        let mut violations = 0;
        for (i, position) in self.positions.iter().enumerate() {
            let Some(position) = position else { continue };
            let slot = &mut last[i % self.aggregates];
            if slot.is_some_and(|prev| prev.0 == position.0 && prev.1 >= position.1) {
                violations += 1;
            }
            *slot = Some(*position);
        }
        violations
    }

    /// The run's row; throughput is events over `span`, from the first publish to the last ACK.
    pub fn row(&self, backend: &str, mode: &str, load: &BusLoad, span: &Span) -> Row {
        let elapsed = span.elapsed.max(Duration::from_nanos(1));
        Row {
            backend: backend.into(),
            mode: mode.into(),
            events: load.events as u64,
            payload_bytes: load.payload as u64,
            throughput_eps: load.events as f64 / elapsed.as_secs_f64(),
            ack_p50_ms: self.ack.quantile_ms(0.5),
            ack_p99_ms: self.ack.quantile_ms(0.99),
            ack_max_ms: Some(self.ack.max_ms()),
            lost: self.lost(),
            duplicates: self.duplicates,
            order_violations: self.order_violations(),
            peak_rss_bytes: peak_rss_bytes(),
            window: Some(load.window as u64),
            ..Row::default()
        }
        .with_cpu(span)
    }
}

/// Maps a broker position to (partition or 0, sequence) for order checks.
pub fn position_key(position: &Position) -> (i64, u64) {
    match position {
        Position::Memory { sequence } | Position::Stream { sequence, .. } => (0, *sequence),
        Position::Partition { partition, offset } => (i64::from(*partition), *offset as u64),
        _ => (0, 0),
    }
}

/// Finds the run's index of each result's event. Results come back mostly in publish order, so
/// the event after the last one found is tried first, and the map only when that misses. A random
/// look-up in a map of every event costs a cache miss per result, which the bare clients' harness
/// does not pay (its index travels with each delivery future): it would be counted against
/// Courier.
struct Finder {
    ids: Vec<EventId>,
    index: EventIdMap<EventId, usize>,
    next: usize,
}

impl Finder {
    fn find(&mut self, event_id: EventId) -> usize {
        let found = match self.ids.get(self.next) {
            Some(id) if *id == event_id => self.next,
            _ => self.index[&event_id],
        };
        self.next = found + 1;
        found
    }
}

/// Runs the load through a Courier publisher on `bus`; with `consume`, a consumer group reads
/// the topic while it is written and the row gets publish→handler latency, and lost, duplicated
/// and reordered events as the consumer saw them.
pub async fn run_courier<B: Bus>(bus: &B, load: &BusLoad, consume: bool) -> anyhow::Result<Row> {
    let topic = fresh_topic(bus, "bench").await?;
    let envelopes = load.envelopes()?;
    let ids: Vec<EventId> = envelopes.iter().map(Envelope::event_id).collect();
    let index: EventIdMap<EventId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let sent = Sent::new(load.events);
    let consumer = match consume {
        true => Some(Consumer::start(bus, &topic, load, index.clone(), sent.clone()).await?),
        false => None,
    };

    let publisher = bus.publisher(PublisherConfig::default().window(load.window));
    let mut results = publisher.results().expect("a fresh publisher has its results stream");
    let mut tally = Tally::new(load);
    let clock = Clock::start();
    let mut finder = Finder { ids, index, next: 0 };
    let reader = tokio::spawn(async move {
        while let Some(result) = results.recv().await {
            let latency = result.accepted_at.elapsed();
            match result.outcome {
                Ok(receipt) => tally.success(
                    finder.find(result.event_id),
                    position_key(&receipt.position),
                    receipt.duplicate,
                    latency,
                ),
                Err(error) => tally.failure(error, latency),
            }
        }
        (tally, Instant::now())
    });
    let mut accept = Latency::default();
    for (i, envelope) in envelopes.into_iter().enumerate() {
        let t = Instant::now();
        sent.mark(i, t);
        publisher.submit(&topic, envelope).await?;
        accept.record(t.elapsed());
    }
    publisher.close().await?;
    drop(publisher);
    let (tally, end) = reader.await?;
    let span = clock.stop(end);
    let seen = match consumer {
        Some(consumer) => Some(consumer.finish(bus).await?),
        None => None,
    };
    drop_topic(bus, &topic).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tasks_after = metrics.num_alive_tasks();

    if let Some(error) = &tally.first_error {
        eprintln!("{} publishes failed; first error: {error}", tally.failures);
    }
    let mut row = tally.row(bus.name(), "courier", load, &span);
    row.accept_p50_us = Some(accept.quantile_us(0.5));
    row.accept_p99_us = Some(accept.quantile_us(0.99));
    row.tasks_before = Some(tasks_before as u64);
    row.tasks_after = Some(tasks_after as u64);
    row.tasks_leaked = Some(tasks_after as i64 - tasks_before as i64);
    if let Some(seen) = seen {
        seen.apply(&mut row);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finder_finds_results_in_any_order() {
        let ids: Vec<EventId> = (0..5).map(|_| EventId::new()).collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut finder = Finder { ids: ids.clone(), index, next: 0 };
        let found: Vec<usize> = [0, 1, 3, 4, 2, 0].iter().map(|&i| finder.find(ids[i])).collect();
        assert_eq!(found, [0, 1, 3, 4, 2, 0]);
    }
}
