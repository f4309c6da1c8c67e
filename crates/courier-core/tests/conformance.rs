//! The conformance suite on the in-memory bus.

use courier_core::MemoryBus;

struct Memory;

impl courier_conformance::Harness for Memory {
    type Bus = MemoryBus;

    async fn bus(&self) -> MemoryBus {
        MemoryBus::default()
    }
}

courier_conformance::conformance_tests!(Memory);

/// Deleting a topic drops its events; deleting it again is fine.
#[tokio::test]
async fn delete_topic_drops_its_events() {
    use courier_core::{Bus, Envelope, PublisherConfig};
    let bus = MemoryBus::default();
    let topic = courier_conformance::fresh_topic(&bus, "delete").await;
    let publisher = bus.publisher(PublisherConfig::default());
    let event = Envelope::builder("test", "a-1", "Tested").build().unwrap();
    publisher.publish(&topic, event).await.unwrap().await.unwrap();
    assert_eq!(bus.events(&topic).len(), 1);
    bus.delete_topic(&topic).await.unwrap();
    assert!(bus.events(&topic).is_empty());
    bus.delete_topic(&topic).await.unwrap();
}
