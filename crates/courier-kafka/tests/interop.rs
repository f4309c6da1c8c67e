//! Interoperability on Tansu with kafka-python, an independent Kafka client: it reads what Courier
//! published, in both wire modes, and Courier reads the reference system's envelopes that it
//! produces with the reference system's headers.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_conformance::reference_vectors::{
    assert_is_outbox_variant, assert_is_reference, OUTBOX_VARIANT, REFERENCE, REFERENCE_KAFKA_HEADERS,
};
use courier_core::dispatch::Delivery as _;
use courier_core::wire::WireMode;
use courier_core::{Bus, Envelope, PublisherConfig, Topic, TopicConfig, TraceContext};
use courier_kafka::KafkaBus;
use futures::StreamExt;
use serde_json::{json, Value};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Tenants of the sample events: a Go `int` holds the first, the second is a name.
const TENANTS: [&str; 3] = ["42", "acme", "7"];

fn sample_events() -> Vec<Envelope> {
    (0..3)
        .map(|i| {
            Envelope::builder("order", format!("order-{i}"), "OrderPlaced")
                .event_version(2)
                .payload(format!(r#"{{"total":{i}}}"#))
                .trace(TraceContext::new(TRACEPARENT, None).unwrap())
                .correlation_id(format!("corr-{i}"))
                .tenant(TENANTS[i])
                .header("x-custom", "kept")
                .build()
                .unwrap()
        })
        .collect()
}

/// A fresh topic on Tansu.
async fn fresh_topic(bus: &KafkaBus) -> Topic {
    let topic = Topic::new(format!("interop-{}", uuid::Uuid::now_v7().simple())).unwrap();
    bus.provision(&TopicConfig::new(topic.clone())).await.expect("provision");
    topic
}

/// Publishes `events` in `mode` to a fresh topic and returns what kafka-python read, by event.
async fn publish_and_read(mode: WireMode, events: &[Envelope]) -> Vec<(Envelope, Value)> {
    common::require_tansu();
    let bus = KafkaBus::connect(common::tansu().wire_mode(mode)).expect("connect");
    let topic = fresh_topic(&bus).await;
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

/// Runs the kafka-python script `script` of tests/interop with `stdin` and returns its output.
fn kafka_python(script: &str, args: &[&str], stdin: &str) -> String {
    let path = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install Python 3 and kafka-python (scripts/services.sh)")
        });
    child.stdin.take().expect("piped").write_all(stdin.as_bytes()).expect("write to the script");
    let output = child.wait_with_output().expect("kafka-python script output");
    assert!(
        output.status.success(),
        "kafka-python {script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn read_with_kafka_python(topic: &Topic, count: usize) -> Vec<Value> {
    kafka_python("consume.py", &[common::TANSU, topic.as_str(), &count.to_string()], "")
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
            ("ce_tenant", event.tenant().unwrap().to_owned()),
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
        let tenant = event.tenant().unwrap();
        for (name, value) in [
            ("X-Event-ID", id.as_str()),
            ("X-Aggregate-ID", event.aggregate_id()),
            ("X-Event-Type", "OrderPlaced"),
            ("X-Event-Version", "2"),
            ("X-Trace-ID", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("X-Correlation-ID", event.correlation_id().unwrap()),
            ("X-Tenant-ID", tenant),
        ] {
            assert_eq!(header(&record, name), Some(value), "header {name} in {record}");
        }
        // The value as Python's plain `json` decodes it: the reference struct's fields.
        let body = &record["value_json"];
        assert_eq!(body["event_id"], id);
        assert_eq!(body["aggregate_id"], event.aggregate_id());
        assert_eq!(body["event_type"], "OrderPlaced");
        assert_eq!(body["event_version"], 2);
        assert_eq!(
            body["payload"],
            serde_json::from_slice::<Value>(event.payload()).unwrap(),
            "embedded JSON"
        );
        assert_eq!(body["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(body["correlation_id"], event.correlation_id().unwrap());
        let tenant_id = match tenant.parse::<i64>() {
            Ok(number) => json!(number), // a Go int holds it
            Err(_) => json!(tenant),
        };
        assert_eq!(body["tenant_id"], tenant_id);
        let timestamp = body["timestamp"].as_str().expect("timestamp");
        assert_eq!(parse_time(timestamp), event.timestamp(), "timestamp {timestamp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn courier_reads_the_reference_envelopes_kafka_python_produces() {
    common::require_tansu();
    let bus = KafkaBus::connect(common::tansu()).expect("connect");
    let topic = fresh_topic(&bus).await;
    let outbox_variant_headers = [
        ("X-Event-ID", "order-8:OrderPlaced:1:1707516149000000000"),
        ("X-Aggregate-ID", "order-8"),
        ("X-Event-Version", "1"),
        ("X-Event-Type", "OrderPlaced"),
        ("X-Tenant-ID", "acme"),
    ];
    let records = [
        ("order-7", REFERENCE_KAFKA_HEADERS, REFERENCE),
        ("order-8", &outbox_variant_headers[..], OUTBOX_VARIANT),
    ]
    .iter()
    .map(|(key, headers, value)| json!({ "key": key, "headers": headers, "value": value }).to_string())
    .collect::<Vec<_>>()
    .join("\n");
    tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || kafka_python("produce.py", &[common::TANSU, topic.as_str()], &records)
    })
    .await
    .unwrap();

    let group = format!("reader-{}", uuid::Uuid::now_v7().simple());
    let mut stream = bus.subscribe(&topic, &group).await.expect("subscribe");
    let mut read = HashMap::new();
    while read.len() < 2 {
        let delivery = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("only {} of 2 reference envelopes handed out (the others were refused)", read.len())
            })
            .expect("subscription open");
        read.insert(delivery.envelope().aggregate_id().to_owned(), delivery.envelope().clone());
        delivery.ack().await.unwrap();
    }
    assert_is_reference(&read["order-7"]);
    assert_is_outbox_variant(&read["order-8"]);
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}")).into()
}
