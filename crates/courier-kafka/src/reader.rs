//! [`Bus::read`](courier_core::Bus::read) on Kafka: a consumer assigned every partition of the
//! topic at offsets resolved before the first message is read, so a reader starting at the end
//! misses nothing published after it started.
//!
//! Without a group the consumer commits nothing (its `group.id`, which librdkafka requires to
//! assign partitions, is a throwaway name). With one, each partition
//! resumes at the group's committed offset, or at the start position when the group has none;
//! an acknowledgement stores the message's next offset, which librdkafka commits periodically and
//! when the reader is dropped. The consumer does not join the group (the partitions are assigned,
//! not subscribed), so it shares no work with the group's subscribers: read a group that no
//! subscriber uses.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use courier_core::{
    wire, Error, ErrorKind, Message, Position, ReadOptions, Reader, StartAt, Topic, Undecodable,
};
use futures::stream::{self, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::error::from_kafka;
use crate::Shared;
use crate::{native, record};

/// How long the lookups that resolve start offsets may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a consumer error before polling again, so a broker outage does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

pub(crate) async fn read(shared: &Shared, topic: &Topic, options: ReadOptions) -> Result<Reader, Error> {
    let group = options.get_group().map(str::to_owned);
    let mut config = shared.config.consumer_config(&shared.bootstrap, group.as_deref().unwrap_or_default());
    match &group {
        Some(group) if group.is_empty() => {
            return Err(Error::new(ErrorKind::InvalidInput, "consumer group name must not be empty"))
        }
        Some(_) => config.set("enable.auto.commit", "true").set("enable.auto.offset.store", "false"),
        // librdkafka assigns partitions only to a consumer with a group id; this one is never
        // committed to, so the broker keeps nothing of it.
        None => config.set("group.id", format!("courier-reader-{}", courier_core::EventId::new())),
    };
    let consumer: Arc<StreamConsumer> = Arc::new(
        config.create().map_err(|e| from_kafka(format_args!("creating a reader of topic {topic}"), e))?,
    );
    let assignment = {
        let (consumer, topic) = (Arc::clone(&consumer), topic.clone());
        let start = options.get_start();
        tokio::task::spawn_blocking(move || start_offsets(&consumer, &topic, start, group.is_some()))
            .await
            .map_err(|e| Error::new(ErrorKind::Lost, format!("resolving start offsets: {e}")))??
    };
    consumer.assign(&assignment).map_err(|e| from_kafka(format_args!("assigning topic {topic}"), e))?;
    let acked = options.get_group().is_some();
    let topic = topic.clone();
    let messages = stream::unfold(consumer, move |consumer| {
        let topic = topic.clone();
        async move {
            loop {
                match consumer.recv().await {
                    Ok(message) => {
                        let read = to_message(&message, acked.then(|| Arc::clone(&consumer)));
                        drop(message);
                        return Some((read, consumer));
                    }
                    Err(err) => {
                        tracing::warn!(%topic, error = %err, "reader error");
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
        }
    });
    Ok(Reader::new(messages.boxed()))
}

/// Where each partition of `topic` is read from: the group's committed offset when `grouped` and
/// the group has one, else `start`.
fn start_offsets(
    consumer: &StreamConsumer,
    topic: &Topic,
    start: StartAt,
    grouped: bool,
) -> Result<TopicPartitionList, Error> {
    let name = topic.as_str();
    let metadata = consumer
        .fetch_metadata(Some(name), LOOKUP_TIMEOUT)
        .map_err(|e| from_kafka(format_args!("reading the metadata of topic {topic}"), e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == name && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::new(ErrorKind::Config, format!("topic {topic} does not exist")));
    }
    let mut list = TopicPartitionList::new();
    for &partition in &partitions {
        list.add_partition(name, partition);
    }
    let committed = if grouped {
        consumer
            .committed_offsets(list.clone(), LOOKUP_TIMEOUT)
            .map_err(|e| from_kafka(format_args!("reading the group's offsets of topic {topic}"), e))?
    } else {
        TopicPartitionList::new()
    };
    let by_time = match start {
        StartAt::Time(time) => {
            let millis = time
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let mut times = TopicPartitionList::new();
            for &partition in &partitions {
                times.add_partition_offset(name, partition, Offset::Offset(millis)).expect("a valid offset");
            }
            consumer
                .offsets_for_times(times, LOOKUP_TIMEOUT)
                .map_err(|e| from_kafka(format_args!("looking up offsets by time in topic {topic}"), e))?
        }
        StartAt::Earliest | StartAt::Latest => TopicPartitionList::new(),
    };
    let found = |list: &TopicPartitionList, partition| match list.find_partition(name, partition)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    };
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        // `by_time` is empty unless the start is a time.
        let resolved = found(&committed, partition).or_else(|| found(&by_time, partition));
        let offset = match (resolved, start) {
            (Some(offset), _) => Offset::Offset(offset),
            (None, StartAt::Earliest) => Offset::Beginning,
            // The end as it is now, not when the first fetch resolves it: nothing published after
            // the reader started is missed.
            (None, StartAt::Latest | StartAt::Time(_)) => {
                let (_, high) = consumer.fetch_watermarks(name, partition, LOOKUP_TIMEOUT).map_err(|e| {
                    from_kafka(format_args!("reading the end of topic {topic} partition {partition}"), e)
                })?;
                Offset::Offset(high)
            }
        };
        assignment.add_partition_offset(name, partition, offset).expect("a valid offset");
    }
    Ok(assignment)
}

/// A received record as a read message; `group_consumer` stores its offset when acknowledged.
fn to_message(message: &BorrowedMessage<'_>, group_consumer: Option<Arc<StreamConsumer>>) -> Message {
    let (partition, offset) = (message.partition(), message.offset());
    let body = Bytes::copy_from_slice(message.payload().unwrap_or_default());
    // Header bytes as they are: another client's header that is not UTF-8 makes the record
    // undecodable (shown escaped), where rust-rdkafka's accessors would panic.
    let raw = native::header_bytes(message);
    let content = match record::text_headers(&raw) {
        Ok(headers) => {
            wire::decode(&headers, body.clone()).map_err(|err| Undecodable::new(err.message(), headers, body))
        }
        Err(reason) => {
            let shown = raw
                .iter()
                .map(|(name, value)| {
                    let value = value.as_deref().unwrap_or_default();
                    (name.escape_ascii().to_string(), String::from_utf8_lossy(value).into_owned())
                })
                .collect();
            Err(Undecodable::new(reason, shown, body))
        }
    };
    let stored_at = message
        .timestamp()
        .to_millis()
        .and_then(|millis| u64::try_from(millis).ok())
        .map(|millis| UNIX_EPOCH + Duration::from_millis(millis));
    let read = Message::new(Position::Partition { partition, offset }, stored_at, content);
    let Some(consumer) = group_consumer else { return read };
    let topic = message.topic().to_owned();
    read.on_ack(move || async move {
        // The next offset to read, stored as given (the single-offset `store_offset` adds 1).
        let mut next = TopicPartitionList::new();
        next.add_partition_offset(&topic, partition, Offset::Offset(offset + 1)).expect("a valid offset");
        consumer.store_offsets(&next).map_err(|e| {
            from_kafka(format_args!("storing offset {} of partition {partition}", offset + 1), e)
        })
    })
}
