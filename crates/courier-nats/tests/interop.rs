//! Courier and an independent client, nats-py, run by small scripts in tests/interop: what
//! Courier publishes is read correctly in both wire modes, and Courier reads the reference
//! system's envelopes that nats-py publishes as the reference system does, without headers.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{shared_bus, SHARED_URL};
use courier_conformance::fresh_topic;
use courier_conformance::reference_vectors::{
    assert_is_outbox_variant, assert_is_reference, OUTBOX_VARIANT, REFERENCE,
};
use courier_core::dispatch::Delivery as _;
use courier_core::wire::WireMode;
use courier_core::{Bus, Envelope, PublisherConfig, Topic, TraceContext};
use courier_nats::NatsBus;
use futures::StreamExt;
use serde_json::{json, Value};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn sample(i: usize) -> Envelope {
    Envelope::builder("order", format!("order-{i}"), "OrderPlaced")
        .event_version(2)
        .payload(format!(r#"{{"total":{i}}}"#))
        .trace(TraceContext::new(TRACEPARENT, None).unwrap())
        .correlation_id(format!("corr-{i}"))
        .header("x-custom", "yes")
        .build()
        .unwrap()
}

async fn publish(bus: &NatsBus, topic: &Topic, events: &[Envelope]) {
    let publisher = bus.publisher(PublisherConfig::default());
    for e in events {
        publisher.publish(topic, e.clone()).await.unwrap().await.unwrap();
    }
    publisher.close().await.unwrap();
}

/// Runs the nats-py script `script` of tests/interop with `stdin`, and returns its output; fails
/// loudly when python3 or nats-py is missing or the script fails.
fn nats_py(script: &str, args: &[&str], stdin: &str) -> String {
    let probe = Command::new("python3").args(["-c", "import nats"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "nats-py is not installed for python3 (pip install nats-py, or scripts/services.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => panic!("python3 is required for the interop test and could not be run: {err}"),
    }
    let path = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run a nats-py script");
    child.stdin.take().expect("piped").write_all(stdin.as_bytes()).expect("write to the script");
    let out = child.wait_with_output().expect("nats-py script output");
    assert!(out.status.success(), "nats-py {script} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Reads `count` messages of `topic` with nats-py.
fn read_with_nats_py(topic: &Topic, count: usize) -> Vec<Value> {
    let lines: Vec<Value> = nats_py("read_stream.py", &[SHARED_URL, topic.as_str(), &count.to_string()], "")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), count, "messages read by nats-py");
    lines
}

fn body(message: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(message["body_b64"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn nats_py_reads_cloudevents() {
    let bus = shared_bus(|c| c).await;
    let topic = fresh_topic(&bus, "interop-ce").await;
    let events: Vec<_> = (0..3).map(sample).collect();
    publish(&bus, &topic, &events).await;

    let messages = read_with_nats_py(&topic, events.len());
    for (e, m) in events.iter().zip(&messages) {
        let h = &m["headers"];
        assert_eq!(m["subject"], topic.as_str());
        assert_eq!(h["Nats-Msg-Id"], e.event_id().to_string());
        assert_eq!(h["ce-specversion"], "1.0");
        assert_eq!(h["ce-id"], e.event_id().to_string());
        assert_eq!(h["ce-type"], "OrderPlaced");
        assert_eq!(h["ce-source"], "/courier/order");
        assert_eq!(h["ce-subject"], e.aggregate_id());
        assert_eq!(h["ce-eventversion"], "2");
        assert_eq!(h["ce-traceparent"], TRACEPARENT);
        assert_eq!(h["ce-correlationid"], e.correlation_id().unwrap());
        assert_eq!(h["x-custom"], "yes");
        let time = h["ce-time"].as_str().unwrap();
        assert_eq!(time.parse::<chrono::DateTime<chrono::Utc>>().unwrap(), e.timestamp());
        assert_eq!(body(m), e.payload().as_ref(), "the payload is the body, untouched");
    }
}

#[tokio::test]
async fn nats_py_reads_the_reference_envelope() {
    let bus = shared_bus(|c| c.wire_mode(WireMode::JsonEnvelope)).await;
    let topic = fresh_topic(&bus, "interop-ref").await;
    let tenants = [("42", json!(42)), ("acme", json!("acme"))];
    let events: Vec<_> = tenants
        .iter()
        .enumerate()
        .map(|(i, (t, _))| sample(i).into_builder().tenant(*t).build().unwrap())
        .collect();
    publish(&bus, &topic, &events).await;

    let messages = read_with_nats_py(&topic, events.len());
    for ((e, (tenant, tenant_id)), m) in events.iter().zip(&tenants).zip(&messages) {
        let h = &m["headers"];
        assert_eq!(h["Nats-Msg-Id"], e.event_id().to_string());
        assert_eq!(h["X-Event-ID"], e.event_id().to_string());
        assert_eq!(h["X-Aggregate-ID"], e.aggregate_id());
        assert_eq!(h["X-Event-Type"], "OrderPlaced");
        assert_eq!(h["X-Event-Version"], "2");
        assert_eq!(h["X-Tenant-ID"], *tenant);
        // The body as Python's plain `json` decodes it: the reference struct's fields.
        let json = &m["body_json"];
        assert_eq!(json["event_id"], e.event_id().to_string());
        assert_eq!(json["aggregate_id"], e.aggregate_id());
        assert_eq!(json["event_type"], "OrderPlaced");
        assert_eq!(json["event_version"], 2);
        assert_eq!(json["payload"], serde_json::from_slice::<Value>(e.payload()).unwrap(), "embedded JSON");
        assert_eq!(json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(json["correlation_id"], e.correlation_id().unwrap());
        assert_eq!(json["tenant_id"], *tenant_id, "a number when a Go int holds it");
        let timestamp = json["timestamp"].as_str().unwrap();
        assert_eq!(timestamp.parse::<chrono::DateTime<chrono::Utc>>().unwrap(), e.timestamp());
    }
}

#[tokio::test]
async fn courier_reads_the_reference_envelopes_nats_py_publishes_without_headers() {
    let bus = shared_bus(|c| c).await;
    let topic = fresh_topic(&bus, "interop-ref-in").await;
    let lines: Vec<String> =
        [REFERENCE, OUTBOX_VARIANT].iter().map(|body| json!({ "body": body }).to_string()).collect();
    nats_py("publish.py", &[SHARED_URL, topic.as_str()], &lines.join("\n"));

    let mut stream = bus.subscribe(&topic, "reader").await.unwrap();
    let mut read = HashMap::new();
    while read.len() < 2 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of 2 reference envelopes handed out (the others were refused and dead-lettered)",
                    read.len()
                )
            })
            .expect("subscription open");
        read.insert(delivery.envelope().aggregate_id().to_owned(), delivery.envelope().clone());
        delivery.ack().await.unwrap();
    }
    assert_is_reference(&read["order-7"]);
    assert_is_outbox_variant(&read["order-8"]);
}
