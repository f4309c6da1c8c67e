//! `courier demo`: a simulated business writes orders and their events in one transaction each;
//! the outbox relay publishes the events; a consumer group checks that every event arrives, once,
//! in per-aggregate order. Embedded default: SQLite in a temporary directory and the memory bus.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use courier_core::dispatch::{self, DispatchConfig};
use courier_core::{Bus, DeadLetterTopic, Envelope, EventId, HandlerError, PublisherConfig};
use courier_outbox::{AckedEvent, Outbox, Relay, RelayConfig, RelayObserver, Store, TopicMapper};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Notify;

use crate::args::DemoArgs;
use crate::bench::bus::{drop_topic, fresh_topic};
use crate::bus_url::with_bus;
use crate::report::Latency;
use courier_core::redact_url;

/// Concurrent business writers; each owns a disjoint set of orders, so per-order event order is
/// the order of its writer's commits.
const WRITERS: usize = 4;

/// What the consumer saw.
#[derive(Default)]
struct Observed {
    seen: HashSet<EventId>,
    next_seq: HashMap<String, u64>,
    duplicates: u64,
    order_violations: u64,
}

/// The consumer-side check.
#[derive(Clone)]
struct Verifier {
    observed: Arc<Mutex<Observed>>,
    progress: ProgressBar,
    complete: Arc<Notify>,
    expected: usize,
}

impl Verifier {
    fn observe(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let seq: u64 = serde_json::from_slice::<serde_json::Value>(envelope.payload())
            .ok()
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

/// Records commit→ACK latencies reported by the relay.
#[derive(Clone, Default)]
struct LatencyObserver(Arc<Mutex<Latency>>);

impl RelayObserver for LatencyObserver {
    fn acked(&self, event: &AckedEvent<'_>) {
        self.0.lock().expect("latency lock").record(event.enqueue_to_ack);
    }
}

impl DemoArgs {
    /// Runs the demo on the bus `--bus` names.
    pub async fn run(self) -> anyhow::Result<bool> {
        with_bus!(self.bus.clone(), |bus| run(bus, self).await)
    }
}

async fn run<B: Bus>(bus: B, options: DemoArgs) -> anyhow::Result<bool> {
    let scratch = tempfile::tempdir().context("creating a temporary directory for the demo database")?;
    let db_url = options
        .db
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", scratch.path().join("courier-demo.db").display()));
    let store =
        Store::connect(&db_url).await.with_context(|| format!("connecting to {}", redact_url(&db_url)))?;
    store.migrate().await?;
    create_business_tables(&store).await?;

    let topic = fresh_topic(&bus, "demo-orders").await?;
    let dlq = fresh_topic(&bus, "demo-orders-dlq").await?;
    let outbox = Outbox::new(TopicMapper::new().map("order", topic.clone()));
    let progress = ProgressBar::new(options.events as u64).with_style(
        ProgressStyle::with_template("{spinner} delivered {pos}/{len} [{bar:40}] {per_sec} eta {eta}")
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
    let dead_letter = DeadLetterTopic::new(bus.publisher(PublisherConfig::default()), dlq.clone());
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

    let latency = LatencyObserver::default();
    let relay =
        Relay::new(store.clone(), bus.clone(), RelayConfig::default()).observer(latency.clone()).start();

    let start = Instant::now();
    let run_id = EventId::new().to_string();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, outbox, run_id, options) =
                (store.clone(), outbox.clone(), run_id.clone(), options.clone());
            tokio::spawn(async move { write_orders(&store, &outbox, &run_id, w, &options).await })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    let committed = start.elapsed();
    let stats = consumer.await?;
    let elapsed = start.elapsed();
    relay.shutdown().await?;
    progress.finish_and_clear();
    // The run's topics are its own, and its figures are printed below: leave nothing behind.
    drop_topic(&bus, &topic).await;
    drop_topic(&bus, &dlq).await;
    let outbox_stats = store.stats().await?;

    let o = verifier.observed.lock().expect("observed lock");
    let lost = options.events - o.seen.len();
    let latency = latency.0.lock().expect("latency lock");
    println!(
        "courier demo: {} events over {} orders, {} outbox -> {} bus",
        options.events,
        options.aggregates,
        store.backend(),
        bus.name()
    );
    println!(
        "  committed:        {} business transactions in {:.2}s",
        options.events,
        committed.as_secs_f64()
    );
    println!(
        "  delivered:        {} in {:.2}s ({:.0} events/s end to end)",
        o.seen.len(),
        elapsed.as_secs_f64(),
        o.seen.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  commit->ack:      p50 {:.2} ms, p99 {:.2} ms",
        latency.quantile_ms(0.5),
        latency.quantile_ms(0.99)
    );
    println!(
        "  outbox:           {} published, {} pending, {} dead",
        outbox_stats.published, outbox_stats.pending, outbox_stats.dead
    );
    println!("  consumer:         handled {}, dead-lettered {}", stats.handled, stats.dead_lettered);
    println!("  duplicates seen:  {}", o.duplicates);
    println!("  order violations: {}", o.order_violations);
    println!("  lost:             {lost}");
    let ok = lost == 0 && o.order_violations == 0;
    println!("  verdict:          {}", if ok { "OK" } else { "FAILED" });
    Ok(ok)
}

/// The business's own table, next to the outbox.
async fn create_business_tables(store: &Store) -> anyhow::Result<()> {
    store
        .execute_raw(
            "CREATE TABLE IF NOT EXISTS demo_orders (run_id VARCHAR(64) NOT NULL, \
             order_id BIGINT NOT NULL, state VARCHAR(32) NOT NULL, amount_cents BIGINT NOT NULL, \
             PRIMARY KEY (run_id, order_id))",
        )
        .await?;
    Ok(())
}

/// Writer `w`'s share of the business: orders `o` with `o % WRITERS == w`, each change one
/// transaction holding the order row and its event.
async fn write_orders(
    store: &Store,
    outbox: &Outbox,
    run_id: &str,
    w: usize,
    options: &DemoArgs,
) -> anyhow::Result<()> {
    // Event i belongs to order i % aggregates; this writer owns the orders congruent to w.
    for i in (0..options.events).filter(|i| (i % options.aggregates) % WRITERS == w) {
        let order = (i % options.aggregates) as i64;
        let seq = (i / options.aggregates) as u64;
        let event = Envelope::builder(
            "order",
            format!("order-{order}"),
            if seq == 0 { "OrderPlaced" } else { "OrderAmended" },
        )
        .payload(serde_json::json!({ "order": order, "seq": seq, "amount_cents": 1000 + seq }).to_string())
        .build()?;
        let amount_cents = 1000 + seq as i64;
        // The values are the demo's own numbers and a UUID, so the SQL is written out literally:
        // the same text runs on every database (placeholders differ between them).
        let business_change = if seq == 0 {
            format!(
                "INSERT INTO demo_orders (run_id, order_id, state, amount_cents) \
                 VALUES ('{run_id}', {order}, 'placed', {amount_cents})"
            )
        } else {
            format!(
                "UPDATE demo_orders SET state = 'amended', amount_cents = {amount_cents} \
                 WHERE run_id = '{run_id}' AND order_id = {order}"
            )
        };
        let mut tx = store.begin().await?;
        tx.execute_raw(&business_change).await?;
        outbox.enqueue(&mut tx, &event).await?;
        tx.commit().await?;
    }
    Ok(())
}
