//! Splits Courier's NATS publish cost into its parts, in one process against one server: bare
//! async-nats with only `Nats-Msg-Id`, bare async-nats with the same CloudEvents headers Courier
//! writes (encoded per event, as Courier does), and a Courier publisher. Same load for all: N
//! events of P bytes, W PubAcks in flight, file storage, a fresh stream per run.
//!
//! `cargo run --release -p courier-nats --example wire_overhead -- [URL] [EVENTS] [PAYLOAD] [WINDOW]`

use std::future::IntoFuture;
use std::time::Instant;

use async_nats::header::HeaderName;
use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use async_nats::HeaderMap;
use bytes::Bytes;
use courier_core::wire::{self, HeaderSink, HeaderStyle, WireMode};
use courier_core::{Bus, Envelope, Error, PublisherConfig, Topic, TopicConfig};
use courier_nats::{NatsBus, NatsConfig};
use futures::stream::{FuturesUnordered, StreamExt};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |a| a.parse().expect("a number"));
    let url = args.get(1).cloned().unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let (events, payload, window) = (arg(2, 100_000), arg(3, 1024), arg(4, 4096));
    let bus = NatsBus::connect(NatsConfig::new(url)).await?;
    let body = Bytes::from(vec![b'x'; payload]);
    let envelopes = |n: usize| -> Vec<Envelope> {
        (0..n)
            .map(|i| {
                let builder = Envelope::builder("bench", format!("agg-{}", i % 1000), "Benchmarked");
                builder.payload(body.clone()).build().expect("valid envelope")
            })
            .collect()
    };
    for headers in [false, true] {
        let rate = bare(&bus, envelopes(events), window, headers).await?;
        let label = if headers { "bare + CloudEvents headers" } else { "bare, Nats-Msg-Id only" };
        println!("{label:<28} {rate:>8.0} events/s");
    }
    let rate = courier(&bus, envelopes(events), window).await?;
    println!("{:<28} {rate:>8.0} events/s", "courier publisher");
    Ok(())
}

async fn fresh_topic(bus: &NatsBus) -> Result<Topic, Error> {
    let topic = Topic::new(format!("wire-overhead-{}", uuid::Uuid::now_v7().simple()))?;
    bus.provision(&TopicConfig::new(topic.clone())).await?;
    Ok(topic)
}

async fn bare(bus: &NatsBus, envelopes: Vec<Envelope>, window: usize, headers: bool) -> Result<f64, Error> {
    let topic = fresh_topic(bus).await?;
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(window)
        .backpressure_on_inflight(true)
        .build(bus.client().clone());
    let count = envelopes.len();
    let mut inflight = FuturesUnordered::new();
    let mut envelopes = envelopes.into_iter();
    let start = Instant::now();
    loop {
        if inflight.len() < window {
            if let Some(e) = envelopes.next() {
                let mut message = PublishMessage::build().message_id(e.event_id().to_string());
                message = if headers {
                    let mut map = Headers(HeaderMap::new());
                    let body = wire::encode(&e, WireMode::CloudEvents, HeaderStyle::Nats, &mut map);
                    map.0.insert("Nats-Msg-Id", e.event_id().to_string());
                    message.headers(map.0).payload(body)
                } else {
                    message.payload(e.payload().clone())
                };
                let ack = js.send_publish(topic.to_string(), message).await.expect("publish");
                inflight.push(ack.into_future());
                continue;
            }
        }
        match inflight.next().await {
            Some(ack) => drop(ack.expect("PubAck")),
            None => break,
        }
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    cleanup(bus, &topic).await;
    Ok(rate)
}

/// The CloudEvents headers written into an async-nats map, as Courier's transport does.
struct Headers(HeaderMap);

impl HeaderSink for Headers {
    fn put(&mut self, name: &str, value: &str) {
        self.0.insert(name, value);
    }

    fn put_static(&mut self, name: &'static str, value: &str) {
        self.0.insert(HeaderName::from_static(name), value);
    }
}

async fn courier(bus: &NatsBus, envelopes: Vec<Envelope>, window: usize) -> Result<f64, Error> {
    let topic = fresh_topic(bus).await?;
    let publisher = bus.publisher(PublisherConfig::default().window(window));
    let mut results = publisher.results().expect("results stream");
    let count = envelopes.len();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        while let Some(result) = results.recv().await {
            result.outcome.expect("PubAck");
        }
    });
    for e in envelopes {
        publisher.submit(&topic, e).await?;
    }
    publisher.close().await?;
    reader.await.expect("reader");
    let rate = count as f64 / start.elapsed().as_secs_f64();
    cleanup(bus, &topic).await;
    Ok(rate)
}

async fn cleanup(bus: &NatsBus, topic: &Topic) {
    let _ = bus.jetstream().delete_stream(courier_nats::stream_name(topic)).await;
}
