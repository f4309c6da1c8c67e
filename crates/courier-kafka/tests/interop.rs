//! Interoperability: kafka-python, an independent Kafka client, reads what Courier published to
//! Tansu, in both wire modes.

mod common;

use std::process::Command;

use chrono::{DateTime, Utc};
use courier_core::wire::{self, WireMode};
use courier_core::{Bus, Envelope, PublisherConfig, Topic, TopicConfig, TraceContext};
use courier_kafka::KafkaBus;
use serde_json::Value;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn sample_events() -> Vec<Envelope> {
    (0..3)
        .map(|i| {
            Envelope::builder("order", format!("order-{i}"), "OrderPlaced")
                .event_version(2)
                .payload(format!(r#"{{"total":{i}}}"#))
                .trace(TraceContext::new(TRACEPARENT, None).unwrap())
                .correlation_id(format!("corr-{i}"))
                .header("x-custom", "kept")
                .build()
                .unwrap()
        })
        .collect()
}

/// Publishes `events` in `mode` to a fresh topic and returns what kafka-python read, by event.
async fn publish_and_read(mode: WireMode, events: &[Envelope]) -> Vec<(Envelope, Value)> {
    common::require_tansu();
    let bus = KafkaBus::connect(common::tansu().wire_mode(mode)).expect("connect");
    let topic = Topic::new(format!("interop-{}", uuid::Uuid::now_v7().simple())).unwrap();
    bus.provision(&TopicConfig::new(topic.clone())).await.expect("provision");
    let publisher = bus.publisher(PublisherConfig::default());
    for e in events {
        publisher.publish(&topic, e.clone()).await.unwrap().await.expect("acknowledged");
    }
    publisher.close().await.unwrap();

    let records = tokio::task::spawn_blocking({
        let (topic, count) = (topic.clone(), events.len());
        move || read_with_kafka_python(&topic, count)
    })
    .await
    .unwrap();
    assert_eq!(records.len(), events.len());
    // One partition and keys in publish order: records come back in publish order.
    events.iter().cloned().zip(records).collect()
}

fn read_with_kafka_python(topic: &Topic, count: usize) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/consume.py");
    let output = Command::new("python3")
        .args([script, common::TANSU, topic.as_str(), &count.to_string()])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install Python 3 and kafka-python (scripts/services.sh)")
        });
    assert!(
        output.status.success(),
        "the kafka-python consumer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8 output")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line per record"))
        .collect()
}

fn header<'a>(record: &'a Value, name: &str) -> Option<&'a str> {
    record["headers"].as_array()?.iter().find(|h| h[0] == name).and_then(|h| h[1].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_reads_cloudevents_binary_mode() {
    for (event, record) in publish_and_read(WireMode::CloudEvents, &sample_events()).await {
        assert_eq!(record["key"], event.aggregate_id(), "key = aggregate_id");
        assert_eq!(record["value"], std::str::from_utf8(event.payload()).unwrap(), "payload as the body");
        let expected = [
            ("ce_specversion", "1.0".to_owned()),
            ("ce_id", event.event_id().to_string()),
            ("ce_type", "OrderPlaced".to_owned()),
            ("ce_source", "/courier/order".to_owned()),
            ("ce_subject", event.aggregate_id().to_owned()),
            ("ce_eventversion", "2".to_owned()),
            ("ce_traceparent", TRACEPARENT.to_owned()),
            ("ce_correlationid", event.correlation_id().unwrap().to_owned()),
            ("x-custom", "kept".to_owned()),
        ];
        for (name, value) in expected {
            assert_eq!(header(&record, name), Some(value.as_str()), "header {name} in {record}");
        }
        let time = header(&record, "ce_time").expect("ce_time");
        assert_eq!(parse_time(time), event.timestamp(), "ce_time {time}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_reads_the_reference_envelope() {
    for (event, record) in publish_and_read(WireMode::JsonEnvelope, &sample_events()).await {
        assert_eq!(record["key"], event.aggregate_id(), "key = aggregate_id");
        let id = event.event_id().to_string();
        for (name, value) in [
            ("X-Event-ID", id.as_str()),
            ("X-Aggregate-ID", event.aggregate_id()),
            ("X-Event-Type", "OrderPlaced"),
            ("X-Event-Version", "2"),
        ] {
            assert_eq!(header(&record, name), Some(value), "header {name} in {record}");
        }
        let body: Value = serde_json::from_str(record["value"].as_str().unwrap()).expect("a JSON envelope");
        assert_eq!(body["event_id"], id);
        assert_eq!(body["aggregate_id"], event.aggregate_id());
        assert_eq!(body["event_type"], "OrderPlaced");
        assert_eq!(body["event_version"], 2);
        assert_eq!(body["payload"], wire::json_envelope_payload(event.payload()));
        assert_eq!(body["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(body["correlation_id"], event.correlation_id().unwrap());
        let timestamp = body["timestamp"].as_str().expect("timestamp");
        assert_eq!(parse_time(timestamp), event.timestamp(), "timestamp {timestamp}");
    }
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}")).into()
}
