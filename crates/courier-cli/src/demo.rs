//! `courier demo`: a simulated business publishes order events over many aggregates; a consumer
//! group checks that every event arrives, once, in per-aggregate order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use courier_core::dispatch::{self, DispatchConfig};
use courier_core::{Bus, DeadLetterTopic, Envelope, EventId, HandlerError, PublisherConfig};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Notify;

use crate::bench::bus::fresh_topic;
use crate::report::Latency;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub events: usize,
    pub aggregates: usize,
    /// How long to wait for the last event at the consumer.
    pub timeout: Duration,
}

/// What the consumer saw.
#[derive(Default)]
struct Observed {
    seen: HashSet<EventId>,
    next_seq: HashMap<String, u64>,
    duplicates: u64,
    order_violations: u64,
}

/// The consumer-side check shared by every demo flavour.
#[derive(Clone)]
struct Verifier {
    observed: Arc<Mutex<Observed>>,
    progress: ProgressBar,
    complete: Arc<Notify>,
    expected: usize,
}

impl Verifier {
    fn observe(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let seq: u64 = std::str::from_utf8(envelope.payload())
            .ok()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|v| v["seq"].as_u64())
            .ok_or_else(|| HandlerError::permanent("payload lacks a numeric seq"))?;
        let mut o = self.observed.lock().expect("observed lock");
        if !o.seen.insert(envelope.event_id()) {
            o.duplicates += 1;
            return Ok(());
        }
        let next = o.next_seq.insert(envelope.aggregate_id().to_owned(), seq + 1).unwrap_or(0);
        if seq != next {
            o.order_violations += 1;
        }
        self.progress.inc(1);
        if o.seen.len() == self.expected {
            self.complete.notify_one();
        }
        Ok(())
    }
}

/// The simulated business: order `i % aggregates` emits its `i / aggregates`-th event.
fn order_event(i: usize, aggregates: usize) -> anyhow::Result<Envelope> {
    let order = i % aggregates;
    let seq = i / aggregates;
    Envelope::builder(
        "order",
        format!("order-{order}"),
        if seq == 0 { "OrderPlaced" } else { "OrderUpdated" },
    )
    .payload(serde_json::json!({ "order": order, "seq": seq, "amount_cents": 1000 + seq }).to_string())
    .build()
    .context("building demo event")
}

pub async fn run<B: Bus>(bus: B, options: DemoOptions) -> anyhow::Result<bool> {
    let topic = fresh_topic(&bus, "demo-orders").await?;
    let dlq = fresh_topic(&bus, "demo-orders-dlq").await?;
    let progress = ProgressBar::new(options.events as u64).with_style(
        ProgressStyle::with_template("{spinner} consumed {pos}/{len} [{bar:40}] {per_sec} eta {eta}")
            .expect("valid template"),
    );
    let verifier = Verifier {
        observed: Arc::default(),
        progress: progress.clone(),
        complete: Arc::new(Notify::new()),
        expected: options.events,
    };
    let source = bus.subscribe(&topic, "demo-consumer").await?;
    let handler = {
        let verifier = verifier.clone();
        move |e: Envelope| {
            let outcome = verifier.observe(&e);
            async move { outcome }
        }
    };
    let dead_letter = DeadLetterTopic::new(bus.publisher(PublisherConfig::default()), dlq);
    let complete = Arc::clone(&verifier.complete);
    let deadline = options.timeout;
    let consumer = tokio::spawn(dispatch::dispatch(
        source,
        handler,
        dead_letter,
        DispatchConfig::default(),
        async move {
            let _ = tokio::time::timeout(deadline, complete.notified()).await;
        },
    ));

    let start = Instant::now();
    let (ack, failures) = publish_all(&bus, &topic, &options).await?;
    let publish_elapsed = start.elapsed();
    let stats = consumer.await?;
    let elapsed = start.elapsed();
    progress.finish_and_clear();

    let o = verifier.observed.lock().expect("observed lock");
    let lost = options.events - o.seen.len();
    println!(
        "courier demo: {} events over {} aggregates on the {} bus",
        options.events,
        options.aggregates,
        bus.name()
    );
    println!(
        "  published:        {} in {:.2}s ({:.0} events/s)",
        options.events,
        publish_elapsed.as_secs_f64(),
        options.events as f64 / publish_elapsed.as_secs_f64()
    );
    println!(
        "  end to end:       {:.2}s ({:.0} events/s)",
        elapsed.as_secs_f64(),
        options.events as f64 / elapsed.as_secs_f64()
    );
    println!("  ack latency:      p50 {:.3} ms, p99 {:.3} ms", ack.quantile_ms(0.5), ack.quantile_ms(0.99));
    println!("  publish failures: {failures}");
    println!(
        "  consumed:         {} (handler runs {}, dead-lettered {})",
        o.seen.len(),
        stats.handled,
        stats.dead_lettered
    );
    println!("  duplicates seen:  {}", o.duplicates);
    println!("  order violations: {}", o.order_violations);
    println!("  lost:             {lost}");
    let ok = lost == 0 && o.order_violations == 0 && failures == 0;
    println!("  verdict:          {}", if ok { "OK" } else { "FAILED" });
    Ok(ok)
}

/// Publishes the demo events, returning ACK latencies and the number of failed publishes.
async fn publish_all<B: Bus>(
    bus: &B,
    topic: &courier_core::Topic,
    options: &DemoOptions,
) -> anyhow::Result<(Latency, u64)> {
    let publisher = bus.publisher(PublisherConfig::default());
    let mut results = publisher.results().expect("fresh publisher");
    let reader = tokio::spawn(async move {
        let (mut ack, mut failures) = (Latency::default(), 0u64);
        while let Some(r) = results.recv().await {
            ack.record(r.accepted_at.elapsed());
            if let Err(error) = r.outcome {
                failures += 1;
                tracing::error!(event_id = %r.event_id, %error, "publish failed");
            }
        }
        (ack, failures)
    });
    for i in 0..options.events {
        publisher.submit(topic, order_event(i, options.aggregates)?).await?;
    }
    publisher.close().await?;
    Ok(reader.await?)
}
