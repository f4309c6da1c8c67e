//! Quick relay measurement while developing (the product benchmark is `courier bench outbox`):
//! drains a backlog of 1 KiB events, then offers half the drain rate as single-event
//! transactions and reports commit→ACK latency (from the return of `commit` to the ACK).
//!
//! `cargo run --release -p courier-outbox --all-features --example relay_bench -- DB_URL [EVENTS]`
//! publishes to NATS at 127.0.0.1:4222; `BUS=memory` uses the in-memory bus instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_core::{Bus, Envelope, EventId, MemoryBus, Topic, TopicConfig};
use courier_nats::{NatsBus, NatsConfig};
use courier_outbox::{AckedEvent, Enqueue, Outbox, Relay, RelayConfig, RelayObserver, Store};
use hdrhistogram::Histogram;

#[derive(Clone)]
struct Observer {
    acked: Arc<AtomicU64>,
    /// When each steady-state event's transaction committed.
    committed: Arc<Mutex<HashMap<EventId, Instant>>>,
    latency: Arc<Mutex<Histogram<u64>>>,
}

impl RelayObserver for Observer {
    fn acked(&self, event: &AckedEvent<'_>) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = self.committed.lock().unwrap().remove(&event.event_id) {
            let _ = self.latency.lock().unwrap().record(at.elapsed().as_micros() as u64);
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: relay_bench DB_URL [EVENTS]");
    let events: u64 = args.get(2).map_or(100_000, |n| n.parse().unwrap());
    let store = Store::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    if std::env::var("BUS").as_deref() == Ok("memory") {
        run(store, MemoryBus::default(), events).await;
    } else {
        run(store, NatsBus::connect(NatsConfig::new("nats://127.0.0.1:4222")).await.unwrap(), events).await;
    }
}

async fn run<B: Bus>(store: Store, bus: B, events: u64) {
    let topic = Topic::new(format!("relay-bench-{:08x}", rand::random::<u32>())).unwrap();
    bus.provision(&TopicConfig::new(topic.clone())).await.unwrap();
    let outbox = Outbox::default();
    let payload = vec![b'x'; 1024];
    let aggregates = 10_000;
    let event = move |name: &str, i: u64| {
        Envelope::builder("order", format!("{name}-{}", i % aggregates), "Bench")
            .payload(payload.clone())
            .build()
            .unwrap()
    };

    // Drain: a backlog enqueued in 1000-event transactions.
    let started = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<Envelope> = chunk.iter().map(|&i| event("order", i)).collect();
        let items: Vec<Enqueue<'_>> = batch.iter().map(|e| Enqueue::new(e).topic(&topic)).collect();
        store.enqueue(&outbox, &items).await.unwrap();
    }
    println!("enqueued {events} in {:.2}s", started.elapsed().as_secs_f64());
    let observer = Observer {
        acked: Arc::default(),
        committed: Arc::default(),
        latency: Arc::new(Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap())),
    };
    let mut config = RelayConfig::default();
    config.retention = None;
    let env = |name: &str, default: usize| std::env::var(name).map_or(default, |v| v.parse().unwrap());
    config.batch_size = env("BATCH", config.batch_size);
    config.max_in_flight = env("IN_FLIGHT", config.max_in_flight);
    let relay = Relay::new(store.clone(), bus.clone(), config).observer(observer.clone()).start();
    let started = Instant::now();
    while observer.acked.load(Ordering::Relaxed) < events {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = events as f64 / started.elapsed().as_secs_f64();
    println!("drain: {events} events in {:.2}s = {drain:.0} events/s", started.elapsed().as_secs_f64());
    while store.stats().await.unwrap().pending > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Steady: half the drain rate, one event per transaction, open loop from many writers.
    let rate = drain / 2.0;
    let total = (rate * 10.0) as u64;
    let before = observer.acked.load(Ordering::Relaxed);
    let writers = 64;
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, outbox, topic, observer) =
                (store.clone(), outbox.clone(), topic.clone(), observer.clone());
            let event = event.clone();
            tokio::spawn(async move {
                let mut i = w;
                while i < total {
                    tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                    let e = event("steady", i);
                    let id = e.event_id();
                    store.enqueue(&outbox, &[Enqueue::new(&e).topic(&topic)]).await.unwrap();
                    observer.committed.lock().unwrap().insert(id, Instant::now());
                    i += writers;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let offered = total as f64 / start.elapsed().as_secs_f64();
    while observer.acked.load(Ordering::Relaxed) < before + total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let h = observer.latency.lock().unwrap().clone();
    println!(
        "steady: target {rate:.0}/s, committed {offered:.0}/s; commit->ack p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    relay.shutdown().await.unwrap();
}
