//! The bare async-nats baseline for `courier bench bus --backend nats --baseline`: the same load
//! (N events of P bytes, W in flight, every PubAck awaited, file storage, `Nats-Msg-Id` set) with
//! no Courier in between, written the way a careful user of the client would: one task keeps W
//! PubAck futures in a `FuturesUnordered`.

use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use courier_core::EventId;
use futures::stream::{FuturesUnordered, StreamExt};

use super::bus::{BusLoad, Tally};
use super::cpu::Clock;
use crate::report::Row;

pub async fn run(url: &str, load: &BusLoad) -> anyhow::Result<Row> {
    // Connected as the Courier bus is (credentials, TLS); only the client is used from here on.
    let config = crate::nats_settings::from_env(url, courier_core::wire::WireMode::default())?;
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
    // Ids made before the clock starts, as Courier's envelopes are.
    let ids: Vec<String> = (0..load.events).map(|_| EventId::new().to_string()).collect();

    let mut tally = Tally::new(load);
    let mut inflight = FuturesUnordered::new();
    let mut ids = ids.into_iter().enumerate();
    let clock = Clock::start();
    loop {
        if inflight.len() < load.window {
            if let Some((index, id)) = ids.next() {
                let sent = Instant::now();
                let message = PublishMessage::build().payload(payload.clone()).message_id(id);
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
    Ok(tally.row("nats", "baseline", load, &span))
}
