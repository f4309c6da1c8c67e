//! Subscribing: a consumer-group member whose offsets are committed by hand, only over the
//! contiguous prefix of acknowledged messages of each partition.
//!
//! Messages of a partition get local sequence numbers in arrival order; an [`OffsetTracker`]
//! over those numbers finds the prefix that is done (Kafka offsets may have gaps, from
//! compaction or transaction markers, so they are not tracked directly). A periodic task
//! commits what advanced; a revoke commits the acknowledged prefix of the revoked partitions and
//! forgets them, so later acknowledgements of their messages commit nothing; dropping the
//! stream commits what is acknowledged and leaves the group.
//!
//! A record that is not a Courier event (a value or headers that do not decode, header bytes that
//! are not UTF-8) is never skipped: it is forwarded, bytes unchanged, to the topic's dead-letter
//! topic ([`KafkaBus::dead_letter_topic`](crate::KafkaBus::dead_letter_topic)) with the reason
//! and its position, and marked done only once the broker acknowledged that copy.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use courier_core::dispatch::Delivery;
use courier_core::{Backoff, Envelope, Error, ErrorKind, OffsetTracker, Position, Topic};
use futures::stream::{self, BoxStream, StreamExt};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::task::JoinHandle;

use crate::error::from_kafka;
use crate::native::{self, Headers};
use crate::producer;
use crate::record::Received;
use crate::Shared;

type KafkaConsumer = StreamConsumer<GroupContext>;

/// Pause after a consumer error before polling again, so a broker outage does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A message received from a Kafka subscription.
pub struct KafkaDelivery {
    envelope: Envelope,
    partition: i32,
    offset: i64,
    /// Identifies the assignment of the partition the message arrived under.
    assignment: u64,
    seq: u64,
    offsets: Arc<Offsets>,
}

impl KafkaDelivery {
    /// The partition the message was read from (all events of one aggregate share it).
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The message's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }
}

impl Delivery for KafkaDelivery {
    fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Marks the message done. Its offset is committed (within the commit interval, or at
    /// rebalance or unsubscribe) once every earlier message of its partition is done too; if its
    /// partition was revoked meanwhile, nothing is committed and the new owner handles it again.
    async fn ack(self) -> Result<(), Error> {
        self.offsets.acked(self.partition, self.assignment, self.seq);
        Ok(())
    }

    fn position(&self) -> Option<Position> {
        Some(Position::Partition { partition: self.partition, offset: self.offset })
    }
}

/// Commit state of the partitions currently assigned to one consumer.
#[derive(Default)]
struct Offsets {
    state: Mutex<OffsetsState>,
}

#[derive(Default)]
struct OffsetsState {
    partitions: HashMap<i32, PartitionOffsets>,
    next_assignment: u64,
}

struct PartitionOffsets {
    assignment: u64,
    /// Over local sequence numbers: sequence `n` is the n-th message received since assignment.
    tracker: OffsetTracker,
    next_seq: u64,
    /// Kafka offsets of the sequences from `tracker.committed()` on, in order.
    offsets: VecDeque<i64>,
    /// The next offset to consume after everything done so far.
    done_until: Option<i64>,
    /// What the broker confirmed as committed.
    committed: Option<i64>,
}

impl Offsets {
    fn lock(&self) -> std::sync::MutexGuard<'_, OffsetsState> {
        self.state.lock().expect("offsets lock")
    }

    /// Registers a received message; returns its assignment id and sequence number.
    fn received(&self, partition: i32, offset: i64) -> (u64, u64) {
        let mut state = self.lock();
        let next_assignment = state.next_assignment;
        let p = state.partitions.entry(partition).or_insert_with(|| PartitionOffsets {
            assignment: next_assignment,
            tracker: OffsetTracker::new(0),
            next_seq: 0,
            offsets: VecDeque::new(),
            done_until: None,
            committed: None,
        });
        let assigned = (p.assignment, p.next_seq);
        p.next_seq += 1;
        p.offsets.push_back(offset);
        if assigned.0 == next_assignment {
            state.next_assignment += 1;
        }
        assigned
    }

    fn acked(&self, partition: i32, assignment: u64, seq: u64) {
        let mut state = self.lock();
        // Revoked (and maybe re-assigned since): its work must not be committed.
        let Some(p) = state.partitions.get_mut(&partition).filter(|p| p.assignment == assignment) else {
            return;
        };
        let before = p.tracker.committed();
        if let Some(after) = p.tracker.complete(seq) {
            let last = p.offsets.drain(..(after - before) as usize).next_back().expect("a done offset");
            p.done_until = Some(last + 1);
        }
    }

    /// Offsets done but not yet confirmed committed, for `partitions` (all when `None`).
    fn to_commit(&self, topic: &Topic, partitions: Option<&[i32]>) -> TopicPartitionList {
        let state = self.lock();
        let mut list = TopicPartitionList::new();
        for (&partition, p) in &state.partitions {
            if partitions.is_some_and(|only| !only.contains(&partition)) {
                continue;
            }
            if let Some(next) = p.done_until.filter(|&next| Some(next) > p.committed) {
                list.add_partition_offset(topic.as_str(), partition, Offset::Offset(next))
                    .expect("a valid offset");
            }
        }
        list
    }

    fn confirmed(&self, topic: &Topic, list: &TopicPartitionList) {
        let mut state = self.lock();
        for element in list.elements_for_topic(topic.as_str()) {
            if let (Some(p), Offset::Offset(next)) =
                (state.partitions.get_mut(&element.partition()), element.offset())
            {
                p.committed = p.committed.max(Some(next));
            }
        }
    }

    fn forget(&self, partitions: &[i32]) {
        let mut state = self.lock();
        for partition in partitions {
            state.partitions.remove(partition);
        }
    }
}

/// librdkafka callbacks of one subscription.
pub struct GroupContext {
    topic: Topic,
    offsets: Arc<Offsets>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(revoked) => {
                let partitions: Vec<i32> =
                    revoked.elements_for_topic(self.topic.as_str()).iter().map(|e| e.partition()).collect();
                let done = self.offsets.to_commit(&self.topic, Some(&partitions));
                if done.count() > 0 {
                    if let Err(err) = consumer.commit(&done, CommitMode::Sync) {
                        tracing::warn!(topic = %self.topic, error = %err, "commit on revoke failed; the new owner re-handles those messages");
                    }
                }
                self.offsets.forget(&partitions);
                tracing::debug!(topic = %self.topic, ?partitions, "partitions revoked");
            }
            Rebalance::Assign(assigned) => {
                tracing::debug!(topic = %self.topic, partitions = assigned.count(), "partitions assigned");
            }
            Rebalance::Error(err) => tracing::warn!(topic = %self.topic, error = %err, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.offsets.confirmed(&self.topic, offsets),
            Err(err) => {
                tracing::warn!(topic = %self.topic, error = %err, "offset commit failed; retried at the next interval")
            }
        }
    }
}

/// Owns the consumer of one subscription; dropping it commits and leaves the group.
struct Subscription {
    consumer: Arc<KafkaConsumer>,
    committer: JoinHandle<()>,
    /// The bus, whose producer dead-letters records that are not events.
    shared: Arc<Shared>,
    dead_letter: Topic,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.committer.abort();
        let context = self.consumer.context();
        let done = context.offsets.to_commit(&context.topic, None);
        if done.count() > 0 {
            if let Err(err) = self.consumer.commit(&done, CommitMode::Sync) {
                tracing::warn!(topic = %context.topic, error = %err, "final commit failed; those messages will be delivered again");
            }
        }
        // Dropping the last reference closes the consumer, which leaves the group.
    }
}

/// A received record that is not a Courier event, to be dead-lettered.
struct Undecodable {
    record: Received,
    reason: String,
    assignment: u64,
    seq: u64,
}

impl Subscription {
    /// Registers `message` and decodes it. Its headers are read as bytes: rust-rdkafka's header
    /// accessors panic on a name that is not UTF-8.
    fn receive(&self, message: &BorrowedMessage<'_>) -> Result<KafkaDelivery, Box<Undecodable>> {
        let context = self.consumer.context();
        let record = Received {
            topic: context.topic.to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            headers: native::header_bytes(message),
            value: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        };
        let (assignment, seq) = context.offsets.received(record.partition, record.offset);
        match record.decode() {
            Ok(envelope) => Ok(KafkaDelivery {
                envelope,
                partition: record.partition,
                offset: record.offset,
                assignment,
                seq,
                offsets: Arc::clone(&context.offsets),
            }),
            Err(err) => Err(Box::new(Undecodable {
                reason: format!("undecodable message: {err}"),
                record,
                assignment,
                seq,
            })),
        }
    }

    /// Forwards the record to the dead-letter topic, then marks it done, so its offset is
    /// committed only after the broker acknowledged the copy. While that fails it retries with
    /// backoff and reads nothing else: skipping past the record would lose it.
    async fn dead_letter(&self, undecodable: Box<Undecodable>) {
        let Undecodable { record, reason, assignment, seq } = *undecodable;
        let copy = record.dead_letter_copy(&reason, self.shared.max_record_bytes());
        let backoff = Backoff::default();
        let mut failures = 0;
        loop {
            let mut headers = Headers::with_capacity(copy.headers.len());
            for (name, value) in &copy.headers {
                headers.put_bytes(name, value.as_deref());
            }
            let forwarded =
                producer::forward(&self.shared, &self.dead_letter, &copy.key, headers, copy.value.clone())
                    .await;
            match forwarded {
                Ok(stored) => {
                    tracing::error!(position = %record.position(), dead_letter = %self.dead_letter, ?stored, %reason, "record dead-lettered by the consumer");
                    break;
                }
                Err(err) => {
                    failures += 1;
                    let delay = backoff.delay(failures);
                    tracing::error!(position = %record.position(), dead_letter = %self.dead_letter, error = %err, ?delay, "dead-lettering a record failed; retrying, its partition waits");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        self.consumer.context().offsets.acked(record.partition, assignment, seq);
    }
}

pub(crate) fn subscribe(
    shared: &Arc<Shared>,
    topic: &Topic,
    group: &str,
) -> Result<BoxStream<'static, KafkaDelivery>, Error> {
    if group.is_empty() {
        return Err(Error::new(ErrorKind::InvalidInput, "consumer group name must not be empty"));
    }
    let dead_letter = crate::dead_letter_topic(topic)?;
    let context = GroupContext { topic: topic.clone(), offsets: Arc::default() };
    let consumer: KafkaConsumer = shared
        .config
        .consumer_config(&shared.bootstrap, group)
        .create_with_context(context)
        .map_err(|e| from_kafka(format_args!("creating a consumer in group {group}"), e))?;
    consumer
        .subscribe(&[topic.as_str()])
        .map_err(|e| from_kafka(format_args!("subscribing group {group} to topic {topic}"), e))?;
    let consumer = Arc::new(consumer);
    let committer =
        tokio::spawn(commit_periodically(Arc::downgrade(&consumer), shared.config.commit_interval));
    let subscription = Subscription { consumer, committer, shared: Arc::clone(shared), dead_letter };
    Ok(stream::unfold(subscription, |subscription| async move {
        loop {
            let next = match subscription.consumer.recv().await {
                Ok(message) => Ok(subscription.receive(&message)),
                Err(err) => Err(err),
            };
            match next {
                Ok(Ok(delivery)) => return Some((delivery, subscription)),
                Ok(Err(undecodable)) => subscription.dead_letter(undecodable).await,
                Err(err) => {
                    tracing::warn!(topic = %subscription.consumer.context().topic, error = %err, "consumer error");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
    })
    .boxed())
}

async fn commit_periodically(consumer: Weak<KafkaConsumer>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(consumer) = consumer.upgrade() else { return };
        let context = consumer.context();
        let done = context.offsets.to_commit(&context.topic, None);
        if done.count() > 0 {
            if let Err(err) = consumer.commit(&done, CommitMode::Async) {
                tracing::warn!(topic = %context.topic, error = %err, "offset commit failed; retried at the next interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committable(offsets: &Offsets, topic: &Topic) -> Vec<(i32, i64)> {
        let mut list: Vec<_> = offsets
            .to_commit(topic, None)
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), o),
                other => panic!("unexpected offset {other:?}"),
            })
            .collect();
        list.sort_unstable();
        list
    }

    #[test]
    fn commits_only_the_contiguous_prefix_across_offset_gaps() {
        let topic = Topic::new("t").unwrap();
        let offsets = Offsets::default();
        // Offsets 10, 11, 15 (a gap, as after compaction) on partition 0.
        let received: Vec<_> = [10, 11, 15].iter().map(|&o| offsets.received(0, o)).collect();
        offsets.acked(0, received[1].0, received[1].1);
        offsets.acked(0, received[2].0, received[2].1);
        assert!(committable(&offsets, &topic).is_empty(), "offset 10 is not done");
        offsets.acked(0, received[0].0, received[0].1);
        assert_eq!(committable(&offsets, &topic), vec![(0, 16)]);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset("t", 0, Offset::Offset(16)).unwrap();
        offsets.confirmed(&topic, &list);
        assert!(committable(&offsets, &topic).is_empty(), "already committed");
    }

    #[test]
    fn acks_for_a_revoked_partition_commit_nothing_even_after_reassignment() {
        let topic = Topic::new("t").unwrap();
        let offsets = Offsets::default();
        let (old, seq) = offsets.received(1, 40);
        offsets.forget(&[1]);
        offsets.acked(1, old, seq);
        assert!(committable(&offsets, &topic).is_empty());
        // Re-assigned: the stale ack from the old assignment still counts for nothing.
        let (new, new_seq) = offsets.received(1, 40);
        assert_ne!(old, new);
        offsets.acked(1, old, seq);
        assert!(committable(&offsets, &topic).is_empty());
        offsets.acked(1, new, new_seq);
        assert_eq!(committable(&offsets, &topic), vec![(1, 41)]);
    }
}
