//! A fatal librdkafka error (the idempotent producer raising `ERR__FATAL`, e.g. after losing
//! track of its sequence numbers) leaves a producer that refuses every message for good. The bus
//! replaces it: events in flight at that moment each get one verdict (success, or a retryable
//! error so the outbox relay re-publishes them), and later publishes succeed on the new producer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use courier_conformance::events;
use courier_core::dispatch::Delivery;
use courier_core::{Bus, Envelope, Error, EventId, PublisherConfig, Receipt, Topic, TopicConfig};
use courier_kafka::{KafkaBus, KafkaConfig};
use futures::StreamExt;
use rdkafka::bindings::{rd_kafka_resp_err_t, rd_kafka_test_fatal_error};

/// Raises a fatal error on the producer in use, as librdkafka does when idempotence breaks.
fn inject_fatal_error(bus: &KafkaBus) {
    let reason = c"injected by the test";
    let code = bus.with_producer_client(|client| {
        // SAFETY: the client is live for the duration of the call, and `reason` is a C string
        // that librdkafka copies.
        unsafe {
            rd_kafka_test_fatal_error(
                client.native_ptr(),
                rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            )
        }
    });
    assert_eq!(code, rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR, "the fatal error was raised");
}

/// Publishes `events` pipelined and returns each event's verdict.
async fn publish(
    bus: &KafkaBus,
    topic: &Topic,
    events: &[Envelope],
) -> HashMap<EventId, Result<Receipt, Error>> {
    let publisher = bus.publisher(PublisherConfig::default().window(10_000));
    let mut acks = Vec::with_capacity(events.len());
    for e in events {
        acks.push(publisher.publish(topic, e.clone()).await.expect("accepted"));
    }
    let mut verdicts = HashMap::new();
    for ack in acks {
        let id = ack.event_id();
        assert!(verdicts.insert(id, ack.await).is_none(), "two verdicts for {id}");
    }
    publisher.close().await.expect("close drains every verdict");
    verdicts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_error_replaces_the_producer_and_loses_no_event() {
    let bus = KafkaBus::connect(KafkaConfig::mock(1).producer_set("message.timeout.ms", "10000"))
        .expect("mock cluster");
    let topic = Topic::new(format!("fatal-{}", uuid::Uuid::now_v7().simple())).unwrap();
    bus.provision(&TopicConfig::new(topic.clone()).partitions(3)).await.expect("provision");
    let warm_up = events(100, 10, 64);
    assert!(publish(&bus, &topic, &warm_up).await.values().all(Result::is_ok));

    // The fatal error strikes while the first batch is queued or in flight.
    let publisher = bus.publisher(PublisherConfig::default().window(10_000));
    let (before, after) = (events(2_000, 40, 128), events(2_000, 40, 128));
    let mut acks = Vec::new();
    for e in &before {
        acks.push(publisher.publish(&topic, e.clone()).await.expect("accepted"));
    }
    inject_fatal_error(&bus);
    let mut later_acks = Vec::new();
    for e in &after {
        later_acks.push(publisher.publish(&topic, e.clone()).await.expect("accepted"));
    }

    let mut failed = Vec::new();
    let by_id: HashMap<EventId, &Envelope> = before.iter().map(|e| (e.event_id(), e)).collect();
    for ack in acks {
        let id = ack.event_id();
        let verdict =
            tokio::time::timeout(Duration::from_secs(60), ack).await.expect("a verdict for every event");
        if let Err(err) = verdict {
            assert!(err.is_retryable(), "an event caught by the fatal error can be re-published: {err}");
            failed.push(by_id[&id].clone());
        }
    }
    for ack in later_acks {
        let verdict =
            tokio::time::timeout(Duration::from_secs(60), ack).await.expect("a verdict for every event");
        let receipt = verdict.expect("publishes after the fatal error go to the new producer");
        assert!(!receipt.duplicate);
    }
    publisher.close().await.expect("close drains every verdict");
    assert_eq!(bus.producer_restarts(), 1);

    // Re-publish what failed, as the outbox relay does.
    let retried = publish(&bus, &topic, &failed).await;
    for (id, verdict) in &retried {
        assert!(verdict.is_ok(), "re-publish of {id} on the new producer: {verdict:?}");
    }

    // Every event is stored: read the topic back.
    let expected: HashSet<EventId> =
        warm_up.iter().chain(&before).chain(&after).map(Envelope::event_id).collect();
    let mut stream =
        bus.subscribe(&topic, &format!("reader-{}", uuid::Uuid::now_v7().simple())).await.unwrap();
    let mut seen = HashSet::new();
    while !expected.iter().all(|id| seen.contains(id)) {
        let delivery = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} events readable", seen.len(), expected.len()))
            .expect("stream open");
        seen.insert(delivery.envelope().event_id());
        delivery.ack().await.unwrap();
    }
}
