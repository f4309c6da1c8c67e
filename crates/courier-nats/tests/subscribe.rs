//! Subscriber behaviour beyond the conformance suite: messages that cannot be handed out are
//! dead-lettered, never skipped.

mod common;

use std::time::Duration;

use common::{event, shared_bus};
use courier_conformance::fresh_topic;
use courier_core::dispatch::Delivery;
use courier_core::{Bus, PublisherConfig, DEAD_LETTER_ATTEMPTS_HEADER, DEAD_LETTER_REASON_HEADER};
use futures::StreamExt;

#[tokio::test]
async fn undecodable_message_goes_to_the_dead_letter_topic() {
    let bus = shared_bus(|c| c).await;
    let topic = fresh_topic(&bus, "garbage").await;
    let dlq = bus.config().dead_letter_topic(&topic).unwrap();
    // A foreign publisher writes something that is neither CloudEvents nor a reference envelope.
    bus.jetstream().publish(topic.to_string(), "not an event".into()).await.unwrap().await.unwrap();
    let good = event("g-1", "fine");
    let publisher = bus.publisher(PublisherConfig::default());
    publisher.publish(&topic, good.clone()).await.unwrap().await.unwrap();
    publisher.close().await.unwrap();

    let mut stream = bus.subscribe(&topic, "reader").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap();
    assert_eq!(first.envelope().event_id(), good.event_id(), "the garbage is not handed out");
    first.ack().await.unwrap();

    // Its stream was provisioned on first use; a raw reader sees the original body and the reason.
    let mut dead =
        bus.jetstream().get_stream(courier_nats::stream_name(&dlq)).await.expect("dead-letter stream");
    let message = dead.get_raw_message(1).await.expect("dead-lettered message");
    assert_eq!(message.payload.as_ref(), b"not an event");
    let reason = message.headers.get(DEAD_LETTER_REASON_HEADER).expect("reason header").to_string();
    assert!(reason.contains("undecodable"), "{reason}");
    assert_eq!(message.headers.get(DEAD_LETTER_ATTEMPTS_HEADER).unwrap().as_str(), "1");
    assert_eq!(dead.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn message_redelivered_past_the_limit_is_dead_lettered() {
    let bus = shared_bus(|c| c.max_deliveries(Some(1))).await;
    let topic = fresh_topic(&bus, "crashloop").await;
    bus.dead_letter(&topic).await.unwrap();
    let poison = event("p-1", "crashes the handler");
    let publisher = bus.publisher(PublisherConfig::default());
    publisher.publish(&topic, poison.clone()).await.unwrap().await.unwrap();
    publisher.close().await.unwrap();

    {
        // Handed out, never acknowledged: as if the process died mid-handler.
        let mut stream = bus.subscribe(&topic, "worker").await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap();
        assert_eq!((d.envelope().event_id(), d.delivered()), (poison.event_id(), 1));
    }
    let dlq_topic = bus.config().dead_letter_topic(&topic).unwrap();
    let mut dead = bus.subscribe(&dlq_topic, "dlq-reader").await.unwrap();
    let _worker = bus.subscribe(&topic, "worker").await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(20), dead.next()).await.expect("dead-lettered").unwrap();
    assert_eq!(d.envelope().event_id(), poison.event_id());
    assert!(d.envelope().headers()[DEAD_LETTER_REASON_HEADER].contains("delivered 2 times"));
    assert_eq!(d.envelope().headers()[DEAD_LETTER_ATTEMPTS_HEADER], "2");
}
