//! The conformance suite on librdkafka's in-process mock cluster (three brokers per test).

use courier_kafka::KafkaBus;

struct MockCluster;

impl courier_conformance::Harness for MockCluster {
    type Bus = KafkaBus;

    async fn bus(&self) -> KafkaBus {
        KafkaBus::mock(3).expect("start a librdkafka mock cluster")
    }

    /// Tansu's conformance run covers reading from a time.
    fn finds_positions_by_time(&self) -> bool {
        false
    }
}

courier_conformance::conformance_tests!(MockCluster);
