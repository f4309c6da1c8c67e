//! Helpers shared by the NATS integration tests.

#![allow(dead_code)] // each test binary uses a different subset

use courier_core::{Envelope, Topic};
use courier_nats::{NatsBus, NatsConfig};

pub const SHARED_URL: &str = "nats://127.0.0.1:4222";

/// A connected bus on the shared server, failing loudly when it is not there.
pub async fn shared_bus(config: impl FnOnce(NatsConfig) -> NatsConfig) -> NatsBus {
    NatsBus::connect(config(NatsConfig::new(SHARED_URL)))
        .await
        .expect("nats-server with JetStream on 127.0.0.1:4222 (start it with scripts/services.sh)")
}

pub fn event(aggregate: &str, payload: impl Into<bytes::Bytes>) -> Envelope {
    Envelope::builder("test", aggregate, "Tested").payload(payload).build().unwrap()
}

/// Messages currently stored in `topic`'s stream.
pub async fn stored_messages(bus: &NatsBus, topic: &Topic) -> u64 {
    let name = courier_nats::stream_name(topic);
    let mut stream = bus.jetstream().get_stream(&name).await.expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}
