//! The thread that polls one subscription's consumer.
//!
//! Polling never stops while the subscription lives, however slowly the application takes
//! messages: librdkafka runs rebalances and commit callbacks on the polling thread, and a
//! member that does not poll within `max.poll.interval.ms` is thrown out of its group. Messages
//! the application has no room for wait here; once [`WAITING_LIMIT`] of them wait, their
//! partitions are paused, and they resume, at the message after the last one received, once
//! everything waiting was taken. Pausing drops what librdkafka prefetched for those partitions
//! (it is fetched again on resume), so it is kept for a backlog, not for every short burst.
//! The same thread commits the acknowledged offsets periodically.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::offsets::Slot;
use super::GroupContext;
use crate::native;
use crate::record::Received;

pub(super) type KafkaConsumer = BaseConsumer<GroupContext>;

/// Messages received but not yet taken by the stream, per subscription.
pub(super) const PREFETCH: usize = 256;
/// Messages waiting for room in the stream beyond [`PREFETCH`] before their partitions are
/// paused: together they bound what a subscription holds ahead of the application. Of the
/// order librdkafka prefetches anyway (`queued.max.messages.kbytes`, 64 MiB), and large
/// because every pause costs a refetch: at 2,048, pause cycles of about a second each held a
/// group on Tansu to 4,000–6,000 messages/s, against 17,000 at this limit (`courier bench
/// report --only bus --backends kafka`).
const WAITING_LIMIT: usize = 16_384;
/// Poll timeout while nothing waits for room: how soon the thread notices the stream is gone.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Poll timeout while messages wait for room: how soon they move once the stream takes some.
const BUSY_POLL: Duration = Duration::from_millis(5);
/// Pause after a consumer error before polling again, so a broker outage does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A received message and where it stands in its partition's assignment.
pub(super) struct Pumped {
    pub record: Received,
    pub slot: Slot,
}

/// Starts polling `consumer` into `tx` until `stop` is set or the stream is dropped; then
/// commits what is acknowledged and closes the consumer, which leaves the group.
pub(super) fn spawn(
    consumer: KafkaConsumer,
    tx: mpsc::Sender<Pumped>,
    stop: Arc<AtomicBool>,
    commit_interval: Duration,
) -> std::io::Result<JoinHandle<()>> {
    let name = format!("courier-kafka-{}", consumer.context().topic);
    std::thread::Builder::new().name(name).spawn(move || {
        Pump { consumer: &consumer, tx, waiting: VecDeque::new(), paused: HashSet::new() }
            .run(&stop, commit_interval);
        let context = consumer.context();
        context.offsets.close();
        commit(&consumer, CommitMode::Sync);
        tracing::debug!(topic = %context.topic, "subscription closed");
        // Dropping the consumer closes it, which revokes its partitions and leaves the group.
    })
}

struct Pump<'a> {
    consumer: &'a KafkaConsumer,
    tx: mpsc::Sender<Pumped>,
    /// Received messages the stream had no room for yet, in arrival order.
    waiting: VecDeque<Pumped>,
    /// Partitions paused because their messages wait.
    paused: HashSet<i32>,
}

impl Pump<'_> {
    fn run(&mut self, stop: &AtomicBool, commit_interval: Duration) {
        let mut last_commit = Instant::now();
        while !stop.load(Ordering::Acquire) {
            if !self.offer_waiting() {
                return;
            }
            if last_commit.elapsed() >= commit_interval {
                commit(self.consumer, CommitMode::Async);
                last_commit = Instant::now();
            }
            let timeout = if self.waiting.is_empty() { IDLE_POLL } else { BUSY_POLL };
            let received = match self.consumer.poll(timeout) {
                None => continue,
                Some(Ok(message)) => self.receive(&message),
                Some(Err(err)) => {
                    tracing::warn!(topic = %self.consumer.context().topic, error = %err, "consumer error");
                    std::thread::sleep(ERROR_PAUSE);
                    continue;
                }
            };
            if let Some(pumped) = received {
                self.waiting.push_back(pumped);
            }
        }
    }

    /// Registers `message` and copies it out of librdkafka's memory; `None` when its partition
    /// is no longer assigned. Headers are read as bytes: rust-rdkafka's header accessors panic
    /// on a name that is not UTF-8.
    fn receive(&self, message: &BorrowedMessage<'_>) -> Option<Pumped> {
        let context = self.consumer.context();
        let slot = context.offsets.received(message.partition(), message.offset())?;
        let record = Received {
            topic: context.topic.to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            headers: native::header_bytes(message),
            value: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        };
        Some(Pumped { record, slot })
    }

    /// Hands waiting messages to the stream, oldest first, pausing the partitions of those that
    /// still find no room and resuming all once none waits. `false` once the stream is gone.
    fn offer_waiting(&mut self) -> bool {
        while let Some(pumped) = self.waiting.pop_front() {
            match self.tx.try_send(pumped) {
                Ok(()) => {}
                Err(TrySendError::Full(pumped)) => {
                    self.waiting.push_front(pumped);
                    if self.waiting.len() >= WAITING_LIMIT {
                        self.pause_those_waiting();
                    }
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        if !self.paused.is_empty() {
            self.resume();
        }
        true
    }

    /// Pauses the partitions of the waiting messages: librdkafka drops what it fetched of them
    /// beyond the messages received here.
    fn pause_those_waiting(&mut self) {
        let topic = &self.consumer.context().topic;
        let mut list = TopicPartitionList::new();
        for partition in self.waiting.iter().map(|p| p.record.partition) {
            if self.paused.insert(partition) {
                list.add_partition(topic.as_str(), partition);
            }
        }
        if list.count() > 0 {
            tracing::debug!(%topic, partitions = ?self.paused, "application busy: partitions paused");
            if let Err(err) = self.consumer.pause(&list) {
                tracing::warn!(%topic, error = %err, "pausing partitions failed");
            }
        }
    }

    /// Resumes every assigned partition (resuming one that is not paused does nothing, and a
    /// partition paused, revoked and assigned again must not stay paused).
    fn resume(&mut self) {
        let topic = &self.consumer.context().topic;
        let resumed = self.consumer.assignment().and_then(|assigned| self.consumer.resume(&assigned));
        match resumed {
            Ok(()) => {
                tracing::debug!(%topic, partitions = ?self.paused, "partitions resumed");
                self.paused.clear();
            }
            Err(err) => tracing::warn!(%topic, error = %err, "resuming partitions failed; retrying"),
        }
    }
}

/// Commits the acknowledged offsets not yet committed.
fn commit(consumer: &KafkaConsumer, mode: CommitMode) {
    let context = consumer.context();
    let done = context.offsets.to_commit(&context.topic, None);
    if done.count() > 0 {
        if let Err(err) = consumer.commit(&done, mode) {
            tracing::warn!(topic = %context.topic, error = %err, "offset commit failed; retried at the next interval");
        }
    }
}
