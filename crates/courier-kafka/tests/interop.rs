//! Interoperability on Tansu with kafka-python, an independent Kafka client: it reads what Courier
//! published, in both wire modes, and Courier reads the reference system's envelopes that it
//! produces with the reference system's headers; records it writes that are not Courier events
//! are dead-lettered.

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
use courier_core::wire::{self, HeaderStyle, WireMode};
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

/// A record as kafka-python is told to write it (see tests/interop/produce_bytes.py).
fn raw_record(key: &[u8], headers: &[(&[u8], &[u8])], value: &[u8]) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let headers: Vec<_> = headers.iter().map(|(n, v)| [hex(n), hex(v)]).collect();
    json!({ "key": hex(key), "headers": headers, "value": hex(value) }).to_string()
}

/// The headers and body Courier writes for `event`, to hand-craft records from.
fn encoded(event: &Envelope) -> (Vec<(String, String)>, bytes::Bytes) {
    let mut headers = Vec::new();
    let body = wire::encode(event, WireMode::CloudEvents, HeaderStyle::Kafka, &mut headers);
    (headers, body)
}

fn good_event(aggregate: &str) -> Envelope {
    Envelope::builder("order", aggregate, "OrderPlaced").payload("{}").build().unwrap()
}

/// Records another client writes that are not Courier events (a garbage value; a header value,
/// or a header name, that is not UTF-8) are each forwarded to the dead-letter topic with the
/// reason and their position, and the next event is handled; nothing is left uncommitted.
/// Before, the first was skipped, the second decoded with its bytes replaced, and the third made
/// rust-rdkafka panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_are_not_events_are_dead_lettered_and_the_next_event_is_handled() {
    common::require_tansu();
    let bus = KafkaBus::connect(common::tansu()).expect("connect");
    let topic = fresh_topic(&bus).await;
    let dlq = bus.dead_letter_topic(&topic).unwrap();
    drop(bus.dead_letter(&topic).await.expect("dead-letter topic provisioned"));

    let (bad_value_event, bad_name_event, good) =
        (good_event("order-1"), good_event("order-2"), good_event("order-3"));
    let with_bad_value = {
        let (mut headers, body) = encoded(&bad_value_event);
        let mut raw: Vec<(Vec<u8>, Vec<u8>)> =
            headers.drain(..).map(|(n, v)| (n.into_bytes(), v.into_bytes())).collect();
        raw.push((b"x-note".to_vec(), b"caf\xe9".to_vec())); // Latin-1, not UTF-8
        let raw: Vec<(&[u8], &[u8])> = raw.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        raw_record(b"order-1", &raw, &body)
    };
    let with_bad_name = {
        let (headers, body) = encoded(&bad_name_event);
        let mut raw: Vec<(&[u8], &[u8])> =
            headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        raw.push((b"x-caf\xe9", b"1"));
        raw_record(b"order-2", &raw, &body)
    };
    let good_record = {
        let (headers, body) = encoded(&good);
        let raw: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        raw_record(b"order-3", &raw, &body)
    };
    let garbage = raw_record(b"order-0", &[], b"\x00\xffnot an event");
    let records = [garbage, with_bad_value, with_bad_name, good_record].join("\n");
    let stored: Vec<Value> = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || kafka_python("produce_bytes.py", &[common::TANSU, topic.as_str()], &records)
    })
    .await
    .unwrap()
    .lines()
    .map(|line| serde_json::from_str(line).unwrap())
    .collect();

    let group = format!("reader-{}", uuid::Uuid::now_v7().simple());
    let mut stream = bus.subscribe(&topic, &group).await.expect("subscribe");
    let delivery = next_delivery(&mut stream).await;
    assert_eq!(delivery.envelope().event_id(), good.event_id(), "the next event is handed out");
    delivery.ack().await.unwrap();

    let copies = tokio::task::spawn_blocking({
        let dlq = dlq.clone();
        move || read_with_kafka_python(&dlq, 3)
    })
    .await
    .unwrap();
    let position = |i: usize| {
        let (partition, offset) = (&stored[i]["partition"], &stored[i]["offset"]);
        format!("topic {topic} partition {partition} offset {offset}")
    };
    let reasons: Vec<_> = copies
        .iter()
        .enumerate()
        .map(|(i, copy)| {
            assert_eq!(header(copy, "courier-dead-letter-position"), Some(position(i).as_str()), "{copy}");
            header(copy, "courier-dead-letter-reason").expect("a reason").to_owned()
        })
        .collect();
    assert!(reasons[0].starts_with("undecodable message:"), "{}", reasons[0]);
    assert_eq!(copies[0]["key"], "order-0");
    assert_eq!(copies[0]["value"], "\0\\xffnot an event", "the value as it was");
    assert_eq!(reasons[1], r#"undecodable message: the value of header "x-note" is not UTF-8: "caf\xe9""#);
    assert_eq!(header(&copies[1], "x-note"), Some(r"caf\xe9"), "the header value as it was");
    assert_eq!(header(&copies[1], "ce_id"), Some(bad_value_event.event_id().to_string().as_str()));
    assert_eq!(reasons[2], r#"undecodable message: header name "x-caf\xe9" is not UTF-8"#);
    assert_eq!(header(&copies[2], r"x-caf\xe9"), Some("1"), "the name escaped, so clients can read the copy");
    assert_eq!(copies[2]["value"], "{}");

    // Every offset is committed: a later member of the group starts after them.
    drop(stream);
    let later = good_event("order-4");
    let publisher = bus.publisher(PublisherConfig::default());
    publisher.publish(&topic, later.clone()).await.unwrap().await.expect("acknowledged");
    publisher.close().await.unwrap();
    let mut stream = bus.subscribe(&topic, &group).await.expect("subscribe again");
    let delivery = next_delivery(&mut stream).await;
    assert_eq!(delivery.envelope().event_id(), later.event_id(), "nothing before it is handed out again");
}

async fn next_delivery(
    stream: &mut futures::stream::BoxStream<'static, courier_kafka::KafkaDelivery>,
) -> courier_kafka::KafkaDelivery {
    tokio::time::timeout(Duration::from_secs(90), stream.next())
        .await
        .expect("a delivery within 90 s")
        .expect("subscription open")
}
