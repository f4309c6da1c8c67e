//! The outbox's size limit against a real broker: the shared nats-server (127.0.0.1:4222, default
//! `max_payload` of 1 MiB), with the outbox on SQLite.

mod common;

use std::time::Duration;

use common::{eventually, fast_config, nats, topic, Kind, TestDb};
use courier_core::wire::{self, WireMode};
use courier_core::{Bus, Envelope, ErrorKind, PublisherConfig, Topic, TopicConfig, DEFAULT_MAX_PAYLOAD};
use courier_nats::NatsBus;
use courier_outbox::{Enqueue, EventFilter, Outbox, OutboxError, Relay};

/// A topic with its stream; the stream is deleted when the test ends.
async fn provisioned(bus: &NatsBus) -> Topic {
    let topic = topic();
    bus.provision(&TopicConfig::new(topic.clone())).await.expect("provision the stream");
    topic
}

async fn delete_stream(bus: &NatsBus, topic: &Topic) {
    let _ = bus.jetstream().delete_stream(courier_nats::stream_name(topic)).await;
}

/// The defect: the outbox used to check the payload alone against 1 MiB, so an event whose
/// payload fitted nats-server's `max_payload` but whose headers pushed it over was enqueued, and
/// its publish then failed for good (the relay marks it dead and parks its aggregate). It is now
/// refused at enqueue, naming its encoded size and the limit, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_over_the_nats_limit_only_with_its_headers_is_refused_at_enqueue() {
    let bus = nats().await;
    let server_max = bus.client().server_info().max_payload;
    assert_eq!(server_max, DEFAULT_MAX_PAYLOAD, "the shared nats-server runs with the default max_payload");
    let topic = provisioned(&bus).await;
    let event = Envelope::builder("order", "order-1", "OrderPlaced")
        .payload(vec![b'x'; server_max - 16])
        .build()
        .unwrap();
    let size = wire::encoded_size(&event, WireMode::CloudEvents);
    assert!(event.payload().len() < server_max && size > server_max, "{size}");

    // What the relay would get for it: accepted by the publisher, then a verdict no retry fixes.
    let publisher = bus.publisher(PublisherConfig::default());
    let ack = publisher.publish(&topic, event.clone()).await.expect("the payload alone fits");
    let err = ack.await.expect_err("too large for the server with its headers");
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert!(!err.is_retryable());
    publisher.close().await.unwrap();

    let (_db, store) = TestDb::create(Kind::Sqlite).await;
    let outbox = Outbox::default();
    let mut tx = store.begin().await.unwrap();
    let refused = outbox.enqueue(&mut tx, Enqueue::new(&event).topic(&topic)).await;
    tx.commit().await.unwrap();
    delete_stream(&bus, &topic).await;
    let err = refused.expect_err("refused at enqueue");
    assert!(matches!(&err, OutboxError::Invalid(v) if v.field == "payload"), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("{size} bytes")), "names the event's size: {text}");
    assert!(text.contains(&format!("{} bytes", outbox.get_max_encoded_size())), "names the limit: {text}");
    assert_eq!(store.stats().await.unwrap(), Default::default(), "nothing written");
}

/// The other side of the default: the largest event it lets in is published by the relay on a
/// nats-server with the default `max_payload`, header framing and `Nats-Msg-Id` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_event_the_default_limit_accepts_is_relayed_to_nats() {
    let bus = nats().await;
    let topic = provisioned(&bus).await;
    let outbox = Outbox::default();
    let with_payload = |len: usize| {
        Envelope::builder("order", "order-1", "OrderPlaced").payload(vec![b'x'; len]).build().unwrap()
    };
    let header_bytes = wire::encoded_size(&with_payload(0), WireMode::CloudEvents);
    let event = with_payload(outbox.get_max_encoded_size() - header_bytes);
    assert_eq!(wire::encoded_size(&event, WireMode::CloudEvents), outbox.get_max_encoded_size());

    let (_db, store) = TestDb::create(Kind::Sqlite).await;
    let mut tx = store.begin().await.unwrap();
    outbox.enqueue(&mut tx, Enqueue::new(&event).topic(&topic)).await.unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    eventually(Duration::from_secs(30), "the event to be published", || async {
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.dead, 0, "went dead: {:?}", store.list_dead(&EventFilter::all(), 1).await);
        stats.published == 1
    })
    .await;
    relay.shutdown().await.unwrap();
    let stored = bus
        .jetstream()
        .get_stream(courier_nats::stream_name(&topic))
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    delete_stream(&bus, &topic).await;
    assert_eq!(stored, 1);
}
