//! What Courier publishes is read correctly by an independent client: nats-py, run by a small
//! script (tests/interop/read_stream.py), in both wire modes.

mod common;

use std::process::Command;

use common::{shared_bus, SHARED_URL};
use courier_conformance::fresh_topic;
use courier_core::wire::{json_envelope_payload, WireMode};
use courier_core::{Bus, Envelope, PublisherConfig, Topic, TraceContext};
use courier_nats::NatsBus;
use serde_json::Value;

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

/// Runs the nats-py reader; fails loudly when python3 or nats-py is missing.
fn read_with_nats_py(topic: &Topic, count: usize) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/read_stream.py");
    let probe = Command::new("python3").args(["-c", "import nats"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "nats-py is not installed for python3 (pip install nats-py, or scripts/services.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => panic!("python3 is required for the interop test and could not be run: {err}"),
    }
    let out = Command::new("python3")
        .arg(script)
        .args([SHARED_URL, topic.as_str(), &count.to_string()])
        .output()
        .expect("run the nats-py reader");
    assert!(out.status.success(), "nats-py reader failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
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
    let events: Vec<_> = (0..2).map(sample).collect();
    publish(&bus, &topic, &events).await;

    let messages = read_with_nats_py(&topic, events.len());
    for (e, m) in events.iter().zip(&messages) {
        let h = &m["headers"];
        assert_eq!(h["Nats-Msg-Id"], e.event_id().to_string());
        assert_eq!(h["X-Event-ID"], e.event_id().to_string());
        assert_eq!(h["X-Aggregate-ID"], e.aggregate_id());
        assert_eq!(h["X-Event-Type"], "OrderPlaced");
        assert_eq!(h["X-Event-Version"], "2");
        let json = &m["body_json"];
        assert_eq!(json["event_id"], e.event_id().to_string());
        assert_eq!(json["aggregate_id"], e.aggregate_id());
        assert_eq!(json["event_type"], "OrderPlaced");
        assert_eq!(json["event_version"], 2);
        assert_eq!(json["payload"], json_envelope_payload(e.payload()));
        assert_eq!(json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(json["correlation_id"], e.correlation_id().unwrap());
        let timestamp = json["timestamp"].as_str().unwrap();
        assert_eq!(timestamp.parse::<chrono::DateTime<chrono::Utc>>().unwrap(), e.timestamp());
    }
}
