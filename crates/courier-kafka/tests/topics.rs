//! Topic deletion: against the Tansu broker over TCP, and its refusal on the mock cluster.

mod common;

use courier_core::{Bus, Envelope, ErrorKind, PublisherConfig, Topic, TopicConfig};
use courier_kafka::KafkaBus;

fn fresh(test: &str) -> TopicConfig {
    TopicConfig::new(Topic::new(format!("kafka-{test}-{}", uuid::Uuid::now_v7().simple())).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topic_removes_it_and_a_missing_one_is_fine() {
    common::require_tansu();
    let bus = KafkaBus::connect(common::tansu()).unwrap();
    let config = fresh("delete");
    bus.provision(&config).await.unwrap();
    bus.delete_topic(config.get_topic()).await.unwrap();
    // With provisioning off, provision only checks that the topic exists.
    let checker = KafkaBus::connect(common::tansu().provision(false)).unwrap();
    let err = checker.provision(&config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    bus.delete_topic(config.get_topic()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_cluster_refuses_to_delete_naming_why() {
    let bus = KafkaBus::mock(1).unwrap();
    let config = fresh("mock-delete");
    bus.provision(&config).await.unwrap();
    let err = bus.delete_topic(config.get_topic()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains("mock cluster"), "{err}");
}

/// A topic deleted and created again is empty: re-publishing an event it held before is a new
/// write, not a duplicate answered from the bus's memory of the old topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_does_not_answer_duplicates_from_the_deleted_one() {
    common::require_tansu();
    let bus = KafkaBus::connect(common::tansu()).unwrap();
    let config = fresh("recreated");
    let topic = config.get_topic().clone();
    let event = Envelope::builder("order", "order-1", "OrderPlaced").payload("{}").build().unwrap();
    let publish = |event: Envelope| {
        let (bus, topic) = (bus.clone(), topic.clone());
        async move {
            let publisher = bus.publisher(PublisherConfig::default());
            let receipt = publisher.publish(&topic, event).await.unwrap().await.unwrap();
            publisher.close().await.unwrap();
            receipt
        }
    };
    bus.provision(&config).await.unwrap();
    assert!(!publish(event.clone()).await.duplicate);
    assert!(publish(event.clone()).await.duplicate, "a re-publish to the same topic is a duplicate");
    bus.delete_topic(&topic).await.unwrap();
    bus.provision(&config).await.unwrap();
    let receipt = publish(event).await;
    assert!(!receipt.duplicate, "the re-created topic reported a duplicate of the deleted one's event");
    bus.delete_topic(&topic).await.unwrap();
}
