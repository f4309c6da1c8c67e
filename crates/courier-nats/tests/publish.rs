//! Publishing against the shared nats-server: de-duplication and oversized events.

mod common;

use std::time::Duration;

use async_nats::jetstream::stream;
use common::{event, shared_bus, stored_messages};
use courier_conformance::fresh_topic;
use courier_core::{Bus, ErrorKind, Position, PublisherConfig, Topic, Transport};

#[tokio::test]
async fn republish_within_the_duplicate_window_is_stored_once() {
    let bus = shared_bus(|c| c).await;
    let topic = fresh_topic(&bus, "dedup").await;
    let publisher = bus.publisher(PublisherConfig::default());
    let original = event("order-1", "first");
    let first = publisher.publish(&topic, original.clone()).await.unwrap().await.unwrap();
    assert!(!first.duplicate);
    let Position::Stream { stream, sequence } = &first.position else { panic!("{:?}", first.position) };
    assert_eq!((stream.as_str(), *sequence), (courier_nats::stream_name(&topic).as_str(), 1));

    // The same event id from another publisher (e.g. a relay that restarted), payload changed.
    let again = original.clone().into_builder().payload("second").build().unwrap();
    let other = bus.publisher(PublisherConfig::default());
    let second = other.publish(&topic, again).await.unwrap().await.unwrap();
    assert!(second.duplicate, "re-publish not flagged duplicate");
    assert_eq!(second.position, first.position);
    assert_eq!(second.event_id, original.event_id());
    publisher.close().await.unwrap();
    other.close().await.unwrap();
    assert_eq!(stored_messages(&bus, &topic).await, 1, "stored once");
}

/// The shared server's `max_payload` (1 MiB) is the transport's limit: larger payloads are refused
/// before acceptance, and an event whose payload fits but whose headers push it over gets a
/// non-retryable verdict instead of reaching the server (which would close the connection and
/// fail every other in-flight event).
#[tokio::test]
async fn event_above_the_server_max_payload_fails_alone() {
    let bus = shared_bus(|c| c).await;
    let topic = fresh_topic(&bus, "max-payload").await;
    let server_max = bus.client().server_info().max_payload;
    let publisher = bus.publisher(PublisherConfig::default().max_payload(2 * server_max));
    assert_eq!(publisher.transport().max_payload(), server_max);

    let refused = publisher.publish(&topic, event("big-0", vec![b'x'; server_max + 1])).await;
    let err = refused.err().expect("refused before acceptance");
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);

    let mut acks = Vec::new();
    for i in 0..50 {
        acks.push(publisher.publish(&topic, event(&format!("small-{i}"), "ok")).await.unwrap());
        if i == 25 {
            let borderline = event("big-1", vec![b'x'; server_max]);
            acks.push(publisher.publish(&topic, borderline).await.expect("payload alone fits"));
        }
    }
    let mut failures = Vec::new();
    for ack in acks {
        if let Err(err) = ack.await {
            failures.push(err);
        }
    }
    assert_eq!(failures.len(), 1, "only the oversized event fails: {failures:?}");
    let err = &failures[0];
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert!(!err.is_retryable());
    assert!(err.message().contains("max_payload"), "{err}");
    publisher.close().await.unwrap();
    assert_eq!(stored_messages(&bus, &topic).await, 50);
}

/// A stream with a smaller `max_msg_size` refuses the event on the server: that PubAck error is a
/// non-retryable PayloadTooLarge for that event only.
#[tokio::test]
async fn event_above_the_stream_max_message_size_fails_alone() {
    let bus = shared_bus(|c| c.provision(false)).await;
    let topic = Topic::new(format!("nats-max-msg-{}", uuid::Uuid::now_v7().simple())).unwrap();
    bus.jetstream()
        .create_stream(stream::Config {
            name: courier_nats::stream_name(&topic),
            subjects: vec![topic.to_string()],
            max_message_size: 2_048,
            ..stream::Config::default()
        })
        .await
        .unwrap();
    let publisher = bus.publisher(PublisherConfig::default());
    let before = publisher.publish(&topic, event("a-1", "ok")).await.unwrap();
    let big = publisher.publish(&topic, event("a-2", vec![b'x'; 4_096])).await.unwrap();
    let after = publisher.publish(&topic, event("a-3", "ok")).await.unwrap();
    before.await.unwrap();
    let err = big.await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert!(!err.is_retryable());
    after.await.unwrap();
    publisher.close().await.unwrap();
}

/// With provisioning off, a subject without a stream is a configuration error naming the
/// subject when the topic is provisioned or subscribed to.
#[tokio::test]
async fn subject_without_stream_is_not_found_when_provisioning_or_subscribing() {
    let bus = shared_bus(|c| c.provision(false)).await;
    let topic = Topic::new(format!("nats-nostream-{}", uuid::Uuid::now_v7().simple())).unwrap();
    let err = bus.provision(&courier_core::TopicConfig::new(topic.clone())).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.message().contains(topic.as_str()), "{err}");

    let err = bus.subscribe(&topic, "g").await.err().expect("no stream to subscribe to");
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

/// Publishing to a subject no stream holds (yet) is answered at once by the server's "no
/// responders" (never a hang until the ack timeout) and is a retryable error naming the
/// subject, as during a leader election: once the stream exists, the same event goes through.
#[tokio::test]
async fn publish_to_subject_without_stream_is_retryable_and_names_it() {
    let bus = shared_bus(|c| c.ack_timeout(Duration::from_secs(30))).await;
    let topic = Topic::new(format!("nats-nostream-{}", uuid::Uuid::now_v7().simple())).unwrap();
    let publisher = bus.publisher(PublisherConfig::default());
    let pending = event("x-1", "?");
    let started = std::time::Instant::now();
    let err = publisher.publish(&topic, pending.clone()).await.unwrap().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20), "answered by no responders, not the ack timeout");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(err.message().contains(&format!("subject {:?}", topic.as_str())), "{err}");

    bus.provision(&courier_core::TopicConfig::new(topic.clone())).await.unwrap();
    let receipt = publisher.publish(&topic, pending).await.unwrap().await.unwrap();
    assert!(!receipt.duplicate);
    publisher.close().await.unwrap();
    assert_eq!(stored_messages(&bus, &topic).await, 1);
}

/// Deleting a topic removes the stream Courier made for it, twice is fine, and a stream Courier
/// did not make (it may hold other subjects) is refused and left alone.
#[tokio::test]
async fn delete_topic_removes_only_streams_courier_made() {
    let bus = shared_bus(|c| c).await;
    let topic = fresh_topic(&bus, "delete").await;
    let publisher = bus.publisher(PublisherConfig::default());
    publisher.publish(&topic, event("d-1", "x")).await.unwrap().await.unwrap();
    publisher.close().await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
    assert!(bus.jetstream().get_stream(courier_nats::stream_name(&topic)).await.is_err(), "stream deleted");
    bus.delete_topic(&topic).await.unwrap();

    let foreign = Topic::new(format!("nats-foreign-{}", uuid::Uuid::now_v7().simple())).unwrap();
    let name = format!("FOREIGN-{}", uuid::Uuid::now_v7().simple());
    bus.jetstream()
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![foreign.to_string(), format!("{foreign}-other")],
            ..stream::Config::default()
        })
        .await
        .unwrap();
    let err = bus.delete_topic(&foreign).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains(&name), "{err}");
    bus.jetstream().get_stream(&name).await.expect("the foreign stream is left alone");
    bus.jetstream().delete_stream(&name).await.unwrap();
}
