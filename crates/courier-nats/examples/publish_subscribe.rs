//! Publishes a few orders to NATS JetStream, waiting for each event's PubAck, then handles them
//! with Courier's dispatch engine; the order its handler refuses goes to a dead-letter topic.
//!
//! `cargo run -p courier-nats --example publish_subscribe [-- nats://127.0.0.1:4222]`
//! (needs a nats-server with JetStream enabled: `nats-server -js`)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use courier_core::dispatch::{dispatch, Delivery, DispatchConfig};
use courier_core::{
    Bus, Envelope, Error, EventId, HandlerError, PublisherConfig, Topic, TopicConfig,
    DEAD_LETTER_REASON_HEADER,
};
use courier_nats::{NatsBus, NatsConfig};
use futures::StreamExt;
use tokio::sync::Notify;

const ORDERS: [(&str, i64); 3] = [("order-1", 30), ("order-2", -5), ("order-1", 12)];

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let bus = NatsBus::connect(NatsConfig::new(url)).await?;
    // A topic of its own per run, so the example starts empty and can clean up after itself.
    let topic = Topic::new(format!("example.orders-{}", EventId::new()))?;
    bus.provision(&TopicConfig::new(topic.clone())).await?;

    // Publish: `publish` returns once the event is accepted (it holds a slot of the in-flight
    // window); awaiting its Ack gives the broker's verdict. Accepting all before awaiting any
    // lets the PubAcks overlap.
    let publisher = bus.publisher(PublisherConfig::default());
    let mut acks = Vec::new();
    for (order, total) in ORDERS {
        let event = Envelope::builder("order", order, "OrderPlaced")
            .payload(format!(r#"{{"total":{total}}}"#))
            .build()?;
        acks.push(publisher.publish(&topic, event).await?);
    }
    for ack in acks {
        let receipt = ack.await?;
        println!("acked {} at {:?} (duplicate: {})", receipt.event_id, receipt.position, receipt.duplicate);
    }
    publisher.close().await?;

    // Subscribe as consumer group "billing": each event is acknowledged only after its handler
    // succeeded or it was dead-lettered. A negative total is a permanent error: no retries.
    let seen = Arc::new(AtomicUsize::new(0));
    let all_seen = Arc::new(Notify::new());
    let handler = {
        let (seen, all_seen) = (Arc::clone(&seen), Arc::clone(&all_seen));
        move |event: Envelope| {
            let (seen, all_seen) = (Arc::clone(&seen), Arc::clone(&all_seen));
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) + 1 == ORDERS.len() {
                    all_seen.notify_one();
                }
                let body = String::from_utf8_lossy(event.payload()).into_owned();
                if body.contains('-') {
                    return Err(HandlerError::permanent(format!("negative total in {body}")));
                }
                println!("handled {} {body}", event.aggregate_id());
                Ok(())
            }
        }
    };
    let dead_letter = bus.dead_letter(&topic).await?;
    let source = bus.subscribe(&topic, "billing").await?;
    // Stops once every event reached the handler; dispatch lets those handler runs finish.
    let stats = dispatch(source, handler, dead_letter, DispatchConfig::default(), all_seen.notified()).await;
    println!("{stats:?}");

    // The dead-letter topic holds the refused event, with the reason in a header.
    let dlq = bus.config().dead_letter_topic(&topic)?;
    let mut dead = bus.subscribe(&dlq, "inspect").await?;
    if let Some(delivery) = dead.next().await {
        let envelope = delivery.envelope();
        let reason = envelope.headers().get(DEAD_LETTER_REASON_HEADER).map_or("", String::as_str);
        println!("dead-lettered {}: {reason}", envelope.aggregate_id());
        delivery.ack().await?;
    }
    drop(dead);

    bus.delete_topic(&dlq).await?;
    bus.delete_topic(&topic).await?;
    Ok(())
}
