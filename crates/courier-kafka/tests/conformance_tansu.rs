//! The conformance suite against the Tansu broker over TCP (scripts/services.sh starts it).
//!
//! The producer sends one record per batch here: Tansu 0.6 (memory storage) answers a fetch
//! only with batches whose *base* offset is at or after the requested offset
//! (`tansu-storage` `dynostore.rs`, `fetch`: `offsets.split_off(&offset)`), so a consumer group
//! resuming from a committed offset inside a multi-record batch never receives the rest of that
//! batch. A real Kafka broker returns the batch containing the offset. With single-record
//! batches every offset is a batch start, and `consumer_group_resumes_after_restart` checks
//! resumption itself rather than that Tansu defect.

mod common;

use courier_kafka::KafkaBus;

struct Tansu;

impl courier_conformance::Harness for Tansu {
    type Bus = KafkaBus;

    async fn bus(&self) -> KafkaBus {
        common::require_tansu();
        let config = common::tansu().producer_set("batch.num.messages", "1");
        KafkaBus::connect(config).expect("connect to Tansu")
    }

    /// Lowered for a network broker: with single-record batches every event is a produce request.
    fn scale(&self) -> usize {
        20_000
    }
}

courier_conformance::conformance_tests!(Tansu);
