//! The bare async-nats baseline for `courier bench bus --backend nats --baseline`: the same load
//! (N events of P bytes, W in flight, every PubAck awaited, file storage, `Nats-Msg-Id` = event
//! id) with no Courier in between, written the way a careful user of the client would: one task
//! keeps W PubAck futures in a `FuturesUnordered`.
//!
//! It runs twice, as the Kafka baseline does. `baseline` sends the messages Courier sends for
//! the same events: payload and the CloudEvents headers. `baseline-payload-only` sends the
//! payload and `Nats-Msg-Id` alone, which shows what the headers cost (async-nats keeps them in
//! a hash map of allocated values, serialized per message).

use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use courier_core::wire::{HeaderStyle, WireMode};
use courier_core::EventId;
use futures::stream::{FuturesUnordered, StreamExt};

use super::bus::{cloudevents_headers, BusLoad, Tally};
use super::cpu::Clock;
use crate::report::Row;

/// The bare rows: `baseline` (Courier's messages) and `baseline-payload-only` (no CloudEvents
/// headers).
pub async fn run(url: &str, load: &BusLoad) -> anyhow::Result<Vec<Row>> {
    // Ids made before the clock starts, as Courier's envelopes are; the async-nats header map
    // is built per send, as a user of the client would.
    let envelopes = load.envelopes()?;
    let ids: Vec<String> = envelopes.iter().map(|envelope| envelope.event_id().to_string()).collect();
    let headers = cloudevents_headers(&envelopes, HeaderStyle::Nats);
    Ok(vec![
        publish(url, load, "baseline", &ids, Some(&headers)).await?,
        publish(url, load, "baseline-payload-only", &ids, None).await?,
    ])
}

/// One bare run, event `i` carrying `ids[i]` and `headers[i]` if given.
async fn publish(
    url: &str,
    load: &BusLoad,
    mode: &str,
    ids: &[String],
    headers: Option<&[Vec<(String, String)>]>,
) -> anyhow::Result<Row> {
    // Connected as the Courier bus is (credentials, TLS); only the client is used from here on.
    let config = crate::nats_settings::from_env(url, WireMode::default())?;
    let client = courier_nats::NatsBus::connect(config).await?.client().clone();
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(load.window)
        .backpressure_on_inflight(true)
        .build(client);
    let name = format!("bench-baseline-{}", EventId::new().as_uuid().simple());
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![name.clone()],
        storage: stream::StorageType::File,
        ..stream::Config::default()
    })
    .await
    .context("creating the baseline stream")?;
    let payload = Bytes::from(vec![b'x'; load.payload]);

    let mut tally = Tally::new(load);
    let mut inflight = FuturesUnordered::new();
    let mut ids = ids.iter().enumerate();
    let clock = Clock::start();
    loop {
        if inflight.len() < load.window {
            if let Some((index, id)) = ids.next() {
                let sent = Instant::now();
                let mut message = PublishMessage::build().payload(payload.clone());
                if let Some(headers) = headers {
                    let mut map = HeaderMap::new();
                    for (name, value) in &headers[index] {
                        map.insert(name.as_str(), value.as_str());
                    }
                    message = message.headers(map);
                }
                let message = message.message_id(id);
                let ack = js.send_publish(name.clone(), message).await.context("baseline publish")?;
                inflight.push(async move { (index, sent, ack.await) });
                continue;
            }
        }
        let Some((index, sent, outcome)) = inflight.next().await else { break };
        match outcome {
            Ok(ack) => tally.success(index, (0, ack.sequence), ack.duplicate, sent.elapsed()),
            Err(error) => tally.failure(error, sent.elapsed()),
        }
    }
    let span = clock.stop(Instant::now());
    if let Some(error) = &tally.first_error {
        eprintln!("{} baseline publishes failed; first error: {error}", tally.failures);
    }
    if let Err(error) = js.delete_stream(&name).await {
        eprintln!("could not delete baseline stream {name}: {error}");
    }
    Ok(tally.row("nats", mode, load, &span))
}
