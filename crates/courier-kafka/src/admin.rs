//! Topic provisioning: created through the admin API from [`TopicConfig`], or validated through
//! metadata when provisioning is off; and deletion of throwaway topics.

use std::sync::Arc;

use courier_core::{Error, ErrorKind, Topic, TopicConfig};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication, TopicResult};
use rdkafka::error::RDKafkaErrorCode;

use crate::error::{from_kafka, kind_of};
use crate::Shared;

pub(crate) async fn provision(shared: &Arc<Shared>, config: &TopicConfig) -> Result<(), Error> {
    let name = config.get_topic().as_str();
    let partitions = to_i32("partitions", config.get_partitions())?;
    let replicas = to_i32("replicas", config.get_replicas())?;
    if config.get_max_messages().is_some() {
        tracing::warn!(topic = name, "Kafka has no message-count retention; max_messages is ignored");
    }
    // The mock cluster does not implement the CreateTopics request; it has its own call.
    let mocked = shared.mock_cluster().map(|mock| mock.create_topic(name, partitions, replicas));
    if let Some(created) = mocked {
        return created.map_err(|e| from_kafka(format_args!("creating topic {name} on the mock cluster"), e));
    }
    let provisioned = async {
        if shared.config.provision {
            create(shared, config, partitions, replicas).await?;
        }
        let created = shared.config.provision;
        validate(Arc::clone(shared), config.get_topic().as_str().to_owned(), partitions, created).await
    };
    provisioned.await.map_err(|e| shared.problem.explain(e))
}

fn to_i32(field: &str, value: u32) -> Result<i32, Error> {
    i32::try_from(value).ok().filter(|&v| v > 0).ok_or_else(|| {
        Error::new(ErrorKind::InvalidInput, format!("topic {field} must be in 1..=2^31-1, got {value}"))
    })
}

async fn create(shared: &Shared, config: &TopicConfig, partitions: i32, replicas: i32) -> Result<(), Error> {
    let name = config.get_topic().as_str();
    let admin =
        shared.admin.as_ref().expect("an admin client exists unless the bus runs on the mock cluster");
    // Kafka's retention.bytes applies per partition; -1 keeps everything.
    let retention_ms =
        config.get_max_age().map_or_else(|| "-1".to_owned(), |age| age.as_millis().to_string());
    let retention_bytes = config.get_max_bytes().map_or_else(|| "-1".to_owned(), |bytes| bytes.to_string());
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replicas))
        .set("retention.ms", &retention_ms)
        .set("retention.bytes", &retention_bytes);
    if let Some(compression) = &shared.config.compression {
        topic = topic.set("compression.type", compression);
    }
    let results = admin
        .create_topics([&topic], &options(shared))
        .await
        .map_err(|e| from_kafka(format_args!("creating topic {name}"), e))?;
    check(results, "creating", RDKafkaErrorCode::TopicAlreadyExists)
}

/// Deletes `topic` through the admin API; one that does not exist is already deleted.
pub(crate) async fn delete(shared: &Shared, topic: &Topic) -> Result<(), Error> {
    let name = topic.as_str();
    let Some(admin) = shared.admin.as_ref() else {
        return Err(Error::new(
            ErrorKind::Config,
            format!("cannot delete topic {name}: the mock cluster has no topic deletion (its topics end with the bus)"),
        ));
    };
    let results = admin
        .delete_topics(&[name], &options(shared))
        .await
        .map_err(|e| from_kafka(format_args!("deleting topic {name}"), e))?;
    check(results, "deleting", RDKafkaErrorCode::UnknownTopicOrPartition)
}

fn options(shared: &Shared) -> AdminOptions {
    let timeout = Some(shared.config.admin_timeout);
    AdminOptions::new().operation_timeout(timeout).request_timeout(timeout)
}

/// The first failure among per-topic admin results, other than `done`, which means the topic
/// already is as asked.
fn check(results: Vec<TopicResult>, verb: &str, done: RDKafkaErrorCode) -> Result<(), Error> {
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, code)) if code == done => {}
            Err((topic, code)) => {
                return Err(Error::new(kind_of(code), format!("{verb} topic {topic} failed: {code}")));
            }
        }
    }
    Ok(())
}

/// Checks through metadata that the topic exists; a partition count other than the configured
/// one is reported but accepted (keys still map each aggregate to one partition). Right after a
/// create (`created`), brokers may still answer that the topic is unknown or has no leader, until
/// the controller's news reaches them: those answers are asked again until `admin_timeout`.
async fn validate(shared: Arc<Shared>, name: String, partitions: i32, created: bool) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || {
        let admin = shared.admin.as_ref().expect("an admin client exists unless the bus runs on the mock cluster");
        let deadline = std::time::Instant::now() + shared.config.admin_timeout;
        loop {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(&name), shared.config.admin_timeout)
                .map_err(|e| from_kafka(format_args!("reading metadata of topic {name}"), e))?;
            let topic = metadata.topics().iter().find(|t| t.name() == name);
            let found = topic.map_or(0, |t| t.partitions().len());
            let error = topic.and_then(|t| t.error()).map(RDKafkaErrorCode::from);
            let settling = matches!(
                error,
                Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::LeaderNotAvailable)
            );
            if created && settling && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            return match error {
                Some(code) => Err(Error::new(kind_of(code), format!("topic {name} is not usable: {code}"))),
                None if found == 0 => Err(Error::new(ErrorKind::NotFound, format!("topic {name} does not exist"))),
                None => {
                    if found != partitions as usize {
                        tracing::warn!(topic = %name, found, configured = partitions, "topic exists with another partition count");
                    }
                    Ok(())
                }
            };
        }
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Unavailable, format!("topic validation task failed: {e}")))?
}
