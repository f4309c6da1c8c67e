//! The conformance suite against the Tansu broker over TCP (scripts/services.sh starts it).

mod common;

use courier_kafka::{KafkaBus, KafkaConfig};

struct Tansu;

impl courier_conformance::Harness for Tansu {
    type Bus = KafkaBus;

    async fn bus(&self) -> KafkaBus {
        common::require_tansu();
        KafkaBus::connect(KafkaConfig::new(common::TANSU)).expect("connect to Tansu")
    }

    fn scale(&self) -> usize {
        50_000
    }
}

courier_conformance::conformance_tests!(Tansu);
