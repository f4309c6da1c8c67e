//! The bare rdkafka baseline for `courier bench bus --backend kafka --baseline`: the same load
//! (N events of P bytes keyed by aggregate, W in flight, idempotent producer with `acks=all`,
//! every delivery report awaited) with no Courier in between, written the way a careful user of
//! the client would: one task keeps W `DeliveryFuture`s of a `FutureProducer` in a
//! `FuturesUnordered`, retrying a send refused because librdkafka's queue is full.
//!
//! It runs twice. `baseline` sends the records Courier sends for the same events: key, payload
//! and the CloudEvents headers, which carry the event's id, type, source, subject, time and
//! version. `baseline-payload-only` sends key and payload alone, a lighter load no event
//! publisher can get away with, which shows what the headers cost librdkafka and the broker.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use courier_core::wire::HeaderStyle;
use courier_core::EventId;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::bus::{cloudevents_headers, BusLoad, Tally};
use super::cpu::Clock;
use crate::report::Row;

/// The bare rows: `baseline` (Courier's records) and `baseline-payload-only` (no headers).
pub async fn run(servers: &str, load: &BusLoad) -> anyhow::Result<Vec<Row>> {
    // The librdkafka header list is built per send, as a user of the client would.
    let headers = cloudevents_headers(&load.envelopes()?, HeaderStyle::Kafka);
    Ok(vec![
        produce(servers, load, "baseline", Some(&headers)).await?,
        produce(servers, load, "baseline-payload-only", None).await?,
    ])
}

/// One bare run, each event `i` carrying `headers[i]` if given.
async fn produce(
    servers: &str,
    load: &BusLoad,
    mode: &str,
    headers: Option<&[Vec<(String, String)>]>,
) -> anyhow::Result<Row> {
    let topic = format!("bench-baseline-{}", EventId::new().as_uuid().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .context("creating the admin client")?;
    let created = admin
        .create_topics([&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .context("creating the baseline topic")?;
    for result in created {
        result.map_err(|(name, code)| anyhow::anyhow!("creating topic {name}: {code}"))?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .context("creating the baseline producer")?;
    // One delivery before the clock starts, so the producer is connected, has its idempotent
    // producer id and the topic's metadata: Courier's producer has been up since the bus
    // connected, and a cold start here would skew the ratio.
    producer
        .send(FutureRecord::to(&topic).key("warm-up").payload("warm-up"), Duration::from_secs(10))
        .await
        .map_err(|(error, _)| anyhow::anyhow!("baseline warm-up delivery: {error}"))?;
    let payload = vec![b'x'; load.payload];
    // Keys made before the clock starts, as Courier's envelopes are.
    let keys: Vec<String> = (0..load.events).map(|i| format!("agg-{}", i % load.aggregates.max(1))).collect();

    let mut tally = Tally::new(load);
    let mut inflight = FuturesUnordered::new();
    let mut next = 0;
    let clock = Clock::start();
    loop {
        if inflight.len() < load.window && next < load.events {
            let sent = Instant::now();
            let mut record = FutureRecord::to(&topic).key(&keys[next]).payload(&payload);
            if let Some(headers) = headers {
                let list = headers[next]
                    .iter()
                    .fold(OwnedHeaders::new_with_capacity(headers[next].len()), |list, (key, value)| {
                        list.insert(Header { key, value: Some(value) })
                    });
                record = record.headers(list);
            }
            let delivery = loop {
                match producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), refused)) => {
                        record = refused;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((error, _)) => anyhow::bail!("baseline send: {error}"),
                }
            };
            let index = next;
            inflight.push(async move { (index, sent, delivery.await) });
            next += 1;
            continue;
        }
        let Some((index, sent, outcome)) = inflight.next().await else { break };
        match outcome {
            Ok(Ok(delivery)) => tally.success(
                index,
                (i64::from(delivery.partition), delivery.offset as u64),
                false,
                sent.elapsed(),
            ),
            Ok(Err((error, _))) => tally.failure(error, sent.elapsed()),
            Err(canceled) => tally.failure(canceled, sent.elapsed()),
        }
    }
    let span = clock.stop(Instant::now());
    if let Some(error) = &tally.first_error {
        eprintln!("{} baseline publishes failed; first error: {error}", tally.failures);
    }
    if let Err(error) = admin.delete_topics(&[&topic], &AdminOptions::new()).await {
        eprintln!("could not delete baseline topic {topic}: {error}");
    }
    Ok(tally.row("kafka", mode, load, &span))
}
