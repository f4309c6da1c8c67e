//! Subscribing: a consumer-group member whose offsets are committed by hand, only over the
//! contiguous prefix of acknowledged messages of each partition ([`offsets`]).
//!
//! A thread polls the consumer without pause ([`pump`]), so rebalances are served however slow
//! the application is. A revoke waits (up to [`KafkaConfig::revoke_timeout`]) for the handlers
//! still working on messages of the revoked partitions, so the next owner never handles an
//! aggregate while this member still does; it then commits the acknowledged prefix of those
//! partitions and forgets them, so later acknowledgements of their messages commit nothing.
//! Dropping the stream commits what is acknowledged and leaves the group.
//!
//! A record that is not a Courier event (a value or headers that do not decode, header bytes that
//! are not UTF-8) is never skipped: it is forwarded, bytes unchanged, to the topic's dead-letter
//! topic ([`KafkaBus::dead_letter_topic`](crate::KafkaBus::dead_letter_topic)) with the reason
//! and its position, and marked done only once the broker acknowledged that copy.
//!
//! [`KafkaConfig::revoke_timeout`]: crate::KafkaConfig::revoke_timeout

mod offsets;
mod pump;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier_core::dispatch::Delivery;
use courier_core::{Backoff, Envelope, Error, ErrorKind, Position, Topic};
use futures::stream::{self, BoxStream, StreamExt};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use self::offsets::{Offsets, Slot};
use self::pump::{KafkaConsumer, Pumped};
use crate::error::from_kafka;
use crate::native::Headers;
use crate::producer;
use crate::record::Received;
use crate::Shared;

/// A message received from a Kafka subscription.
pub struct KafkaDelivery {
    envelope: Envelope,
    offset: i64,
    claim: Claim,
}

impl KafkaDelivery {
    /// The partition the message was read from (all events of one aggregate share it).
    pub fn partition(&self) -> i32 {
        self.claim.slot.partition
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
        self.claim.offsets.acked(self.claim.slot);
        Ok(())
    }

    fn position(&self) -> Option<Position> {
        Some(Position::Partition { partition: self.partition(), offset: self.offset })
    }
}

/// A message the application holds; letting go of it, acknowledged or not, is what a revoke of
/// its partition waits for.
struct Claim {
    slot: Slot,
    offsets: Arc<Offsets>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.offsets.finished(self.slot);
    }
}

/// librdkafka callbacks of one subscription, run on its polling thread.
pub struct GroupContext {
    topic: Topic,
    offsets: Arc<Offsets>,
    revoke_timeout: Duration,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(revoked) => {
                let partitions = partitions_of(&self.topic, revoked);
                // A lost assignment (this member was thrown out) already belongs to others.
                if !consumer.assignment_lost() {
                    let busy = self.offsets.wait_finished(&partitions, self.revoke_timeout);
                    if busy > 0 {
                        tracing::warn!(topic = %self.topic, ?partitions, busy, timeout = ?self.revoke_timeout, "revoking partitions whose handlers did not finish in time; the new owner handles those messages again");
                    }
                }
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
                let partitions = partitions_of(&self.topic, assigned);
                self.offsets.assigned(&partitions);
                tracing::debug!(topic = %self.topic, ?partitions, "partitions assigned");
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

fn partitions_of(topic: &Topic, list: &TopicPartitionList) -> Vec<i32> {
    list.elements_for_topic(topic.as_str()).iter().map(|e| e.partition()).collect()
}

/// The stream's side of one subscription; dropping it stops the polling thread, which commits
/// and leaves the group.
struct Subscription {
    received: mpsc::Receiver<Pumped>,
    stop: Arc<AtomicBool>,
    pump: Option<std::thread::JoinHandle<()>>,
    offsets: Arc<Offsets>,
    /// The bus, whose producer dead-letters records that are not events.
    shared: Arc<Shared>,
    dead_letter: Topic,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // A revoke waiting for handlers must not hold the close up.
        self.offsets.close();
        if let Some(pump) = self.pump.take() {
            if pump.join().is_err() {
                tracing::error!("the Kafka consumer's polling thread panicked");
            }
        }
    }
}

impl Subscription {
    /// The next event for the application; records that are not events are dead-lettered on the
    /// way. `None` once the polling thread ended.
    async fn next(&mut self) -> Option<KafkaDelivery> {
        loop {
            let Pumped { record, slot } = self.received.recv().await?;
            // Revoked since it arrived: the new owner handles it.
            if !self.offsets.hand_out(slot) {
                continue;
            }
            let claim = Claim { slot, offsets: Arc::clone(&self.offsets) };
            match record.decode() {
                Ok(envelope) => return Some(KafkaDelivery { envelope, offset: record.offset, claim }),
                Err(err) => self.dead_letter(record, format!("undecodable message: {err}"), claim).await,
            }
        }
    }

    /// Forwards the record to the dead-letter topic, then marks it done, so its offset is
    /// committed only after the broker acknowledged the copy. While that fails it retries with
    /// backoff and takes nothing else: skipping past the record would lose it.
    async fn dead_letter(&self, record: Received, reason: String, claim: Claim) {
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
        claim.offsets.acked(claim.slot);
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
    let offsets = Arc::<Offsets>::default();
    let context = GroupContext {
        topic: topic.clone(),
        offsets: Arc::clone(&offsets),
        revoke_timeout: shared.config.revoke_timeout,
    };
    let consumer: KafkaConsumer = shared
        .config
        .consumer_config(&shared.bootstrap, group)
        .create_with_context(context)
        .map_err(|e| from_kafka(format_args!("creating a consumer in group {group}"), e))?;
    consumer
        .subscribe(&[topic.as_str()])
        .map_err(|e| from_kafka(format_args!("subscribing group {group} to topic {topic}"), e))?;
    let (tx, received) = mpsc::channel(pump::PREFETCH);
    let stop = Arc::new(AtomicBool::new(false));
    let pump = pump::spawn(consumer, tx, Arc::clone(&stop), shared.config.commit_interval).map_err(|e| {
        Error::new(ErrorKind::Unavailable, format!("starting the consumer thread of group {group}: {e}"))
    })?;
    let subscription =
        Subscription { received, stop, pump: Some(pump), offsets, shared: Arc::clone(shared), dead_letter };
    Ok(stream::unfold(subscription, |mut subscription| async move {
        let delivery = subscription.next().await?;
        Some((delivery, subscription))
    })
    .boxed())
}
