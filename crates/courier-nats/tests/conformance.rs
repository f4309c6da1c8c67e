//! The conformance suite on the shared nats-server (127.0.0.1:4222, JetStream).

use courier_nats::{NatsBus, NatsConfig};

struct Nats;

impl courier_conformance::Harness for Nats {
    type Bus = NatsBus;

    async fn bus(&self) -> NatsBus {
        NatsBus::connect(NatsConfig::new("nats://127.0.0.1:4222"))
            .await
            .expect("nats-server with JetStream on 127.0.0.1:4222 (start it with scripts/services.sh)")
    }

    fn scale(&self) -> usize {
        50_000
    }
}

courier_conformance::conformance_tests!(Nats);
