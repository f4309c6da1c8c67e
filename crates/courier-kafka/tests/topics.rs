//! Topic deletion: against the Tansu broker over TCP, and its refusal on the mock cluster.

mod common;

use courier_core::{Bus, ErrorKind, Topic, TopicConfig};
use courier_kafka::{KafkaBus, KafkaConfig};

fn fresh(test: &str) -> TopicConfig {
    TopicConfig::new(Topic::new(format!("kafka-{test}-{}", uuid::Uuid::now_v7().simple())).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topic_removes_it_and_a_missing_one_is_fine() {
    common::require_tansu();
    let bus = KafkaBus::connect(KafkaConfig::new(common::TANSU)).unwrap();
    let config = fresh("delete");
    bus.provision(&config).await.unwrap();
    bus.delete_topic(config.get_topic()).await.unwrap();
    // With provisioning off, provision only checks that the topic exists.
    let checker = KafkaBus::connect(KafkaConfig::new(common::TANSU).provision(false)).unwrap();
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
