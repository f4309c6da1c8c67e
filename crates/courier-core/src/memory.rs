//! The in-memory bus: a per-topic log with sequences, de-duplication by event id, and consumer
//! groups with committed positions, giving tests and single-process apps the brokers' semantics.
//!
//! # Playing broker faults
//! [`MemoryBus::inject`] makes the next publishes meet a [`Fault`]: a NACK, an ACK lost after
//! the event was stored, a duplicate ACK, a delayed ACK, a stall, or a delivery the broker's
//! de-duplication misses. It is plain public API, not behind a feature: this bus exists for tests
//! and single-process apps, and a fault only happens when a test injects it. Pair it with
//! `courier_outbox::testing` (feature `testing`), which stops a relay between the broker's ACK and
//! the row's mark, to show that a consumer copes with what at-least-once delivery brings.
//!
//! A consumer that de-duplicates by event id (here in memory; in an app, an inbox table in the
//! same transaction as its effect) applies each event once although the broker delivers one
//! twice:
//!
//! ```
//! use std::collections::HashSet;
//!
//! use courier_core::dispatch::Delivery;
//! use courier_core::memory::Fault;
//! use courier_core::{Bus, Envelope, MemoryBus, PublisherConfig, Topic};
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier_core::Error> {
//! let bus = MemoryBus::default();
//! let topic = Topic::new("payments")?;
//! let mut deliveries = bus.subscribe(&topic, "ledger").await?;
//! let publisher = bus.publisher(PublisherConfig::default());
//!
//! // The first event reaches the consumer twice.
//! bus.inject(Fault::DuplicateDelivery, 1);
//! for n in 0..2 {
//!     let event = Envelope::builder("payment", format!("payment-{n}"), "PaymentTaken").build()?;
//!     publisher.publish(&topic, event).await?.await?;
//! }
//!
//! let mut applied = HashSet::new();
//! let mut deliveries_seen = 0;
//! while applied.len() < 2 {
//!     let delivery = deliveries.next().await.expect("subscribed");
//!     deliveries_seen += 1;
//!     applied.insert(delivery.envelope().event_id()); // the consumer's own de-duplication
//!     delivery.ack().await?;
//! }
//! assert_eq!((deliveries_seen, applied.len()), (3, 2));
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::Notify;

mod faults;
mod late;

pub use faults::Fault;
use faults::{Copies, Plan, Verdict};
use late::LateVerdicts;

use crate::bus::{Bus, TopicConfig};
use crate::dispatch::Delivery;
use crate::{
    Completion, Envelope, Error, ErrorKind, EventId, EventIdMap, Message, OffsetTracker, Position, Publisher,
    PublisherConfig, ReadOptions, Reader, Receipt, StartAt, Topic, Transport, DEFAULT_MAX_PAYLOAD,
};

/// Settings of a [`MemoryBus`]: build with [`MemoryConfig::default`] and the setters.
///
/// ```
/// use courier_core::{MemoryBus, MemoryConfig};
///
/// let bus = MemoryBus::new(MemoryConfig::default().max_payload(64 * 1024));
/// ```
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    max_payload: usize,
    max_messages: usize,
    verdict_timeout: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_messages: 1_000_000,
            verdict_timeout: Duration::from_millis(500),
        }
    }
}

impl MemoryConfig {
    /// Largest payload accepted, in bytes, like a broker's message size limit; lower it to test
    /// how callers handle [`ErrorKind::PayloadTooLarge`]. Default 1 MiB.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Events kept per topic before the oldest are dropped (like a stream's `max_msgs`), which
    /// bounds the memory a long-running process uses. A topic's own
    /// [`TopicConfig::max_messages`] applies when lower. Default 1,000,000.
    pub fn max_messages(mut self, max: usize) -> Self {
        self.max_messages = max;
        self
    }

    /// The longest time from a publish to its verdict
    /// ([`Transport::verdict_timeout`]): a verdict an
    /// injected [`Fault`] delays or withholds is [`ErrorKind::Timeout`] at this bound. Without
    /// faults verdicts are immediate. An outbox relay stops handing out events this long before
    /// its lease may expire, so the bound must be shorter than the lease: the default 500 ms fits
    /// the shortest lease the relay accepts (1 s). Raise it to play ACKs delayed for longer.
    pub fn verdict_timeout(mut self, timeout: Duration) -> Self {
        self.verdict_timeout = timeout;
        self
    }

    /// The verdict bound; see [`verdict_timeout`](Self::verdict_timeout).
    pub fn get_verdict_timeout(&self) -> Duration {
        self.verdict_timeout
    }
}

/// An in-process bus. Cheap to clone; clones share topics.
#[derive(Clone, Default)]
pub struct MemoryBus {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    config: MemoryConfig,
    topics: Mutex<HashMap<Topic, Arc<TopicLog>>>,
    /// Faults the next publishes meet, in order.
    faults: Mutex<VecDeque<Fault>>,
    late: LateVerdicts,
}

struct TopicLog {
    state: Mutex<LogState>,
    appended: Notify,
}

struct LogState {
    /// Sequence of `messages[0]`; sequences start at 1.
    first_seq: u64,
    messages: VecDeque<Stored>,
    max_messages: usize,
    duplicate_window: Duration,
    /// Event id → sequence, for ids published within the duplicate window.
    seen: EventIdMap<EventId, u64>,
    seen_order: VecDeque<(Instant, EventId)>,
    groups: HashMap<String, Arc<Mutex<GroupState>>>,
}

/// An event in a topic's log and when it was appended, for readers starting at a time.
struct Stored {
    envelope: Arc<Envelope>,
    at: SystemTime,
}

struct GroupState {
    /// Next sequence to hand out.
    cursor: u64,
    acked: OffsetTracker,
    subscribers: usize,
}

impl MemoryBus {
    /// An empty bus with `config`'s limits; [`MemoryBus::default`] uses the default ones.
    pub fn new(config: MemoryConfig) -> Self {
        Self { inner: Arc::new(Shared { config, ..Shared::default() }) }
    }

    /// Makes each of the next `count` publishes to any topic of this bus (dead letters
    /// included) meet `fault`, after the faults injected before, so callers can exercise their
    /// retry, duplicate and timeout paths. See [`Fault`] for what each does.
    ///
    /// ```
    /// use courier_core::memory::Fault;
    /// use courier_core::{Bus, Envelope, ErrorKind, MemoryBus, PublisherConfig, Topic};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), courier_core::Error> {
    /// let bus = MemoryBus::default();
    /// let publisher = bus.publisher(PublisherConfig::default());
    /// let topic = Topic::new("orders")?;
    /// let event = Envelope::builder("order", "order-1", "OrderPlaced").build()?;
    ///
    /// bus.inject(Fault::LostAck, 1);
    /// let lost = publisher.publish(&topic, event.clone()).await?.await.unwrap_err();
    /// assert_eq!(lost.kind(), ErrorKind::Timeout); // stored, but the ACK never came
    /// let again = publisher.publish(&topic, event).await?.await?;
    /// assert!(again.duplicate); // the re-publish is recognised
    /// assert_eq!(bus.events(&topic).len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn inject(&self, fault: Fault, count: usize) {
        self.inner.faults.lock().expect("faults lock").extend(std::iter::repeat_n(fault, count));
    }

    /// Injected faults that no publish has met yet.
    pub fn faults_left(&self) -> usize {
        self.inner.faults.lock().expect("faults lock").len()
    }

    /// Every event currently stored in `topic`, oldest first.
    pub fn events(&self, topic: &Topic) -> Vec<Arc<Envelope>> {
        let log = self.inner.log(topic);
        let state = log.state.lock().expect("log lock");
        state.messages.iter().map(|m| Arc::clone(&m.envelope)).collect()
    }
}

impl Shared {
    fn log(&self, topic: &Topic) -> Arc<TopicLog> {
        let mut topics = self.topics.lock().expect("topics lock");
        if let Some(log) = topics.get(topic) {
            return Arc::clone(log);
        }
        let log = Arc::new(TopicLog::new(&TopicConfig::new(topic.clone()), &self.config));
        topics.insert(topic.clone(), Arc::clone(&log));
        log
    }
}

impl TopicLog {
    fn new(config: &TopicConfig, bus: &MemoryConfig) -> Self {
        let max_messages = config
            .get_max_messages()
            .map_or(bus.max_messages, |m| usize::try_from(m).unwrap_or(usize::MAX).min(bus.max_messages));
        Self {
            state: Mutex::new(LogState {
                first_seq: 1,
                messages: VecDeque::new(),
                max_messages: max_messages.max(1),
                duplicate_window: config.get_duplicate_window(),
                seen: EventIdMap::default(),
                seen_order: VecDeque::new(),
                groups: HashMap::new(),
            }),
            appended: Notify::new(),
        }
    }

    /// Stores the event unless its id was seen within the duplicate window; with
    /// [`Copies::Two`], then once more whatever the window says. Stores nothing for
    /// [`Copies::None`] and returns `None`.
    fn append(&self, envelope: Envelope, copies: Copies) -> Option<Receipt> {
        if copies == Copies::None {
            return None;
        }
        let event_id = envelope.event_id();
        let envelope = Arc::new(envelope);
        let mut state = self.state.lock().expect("log lock");
        let now = Instant::now();
        state.forget_ids_before(now);
        let receipt = if let Some(&sequence) = state.seen.get(&event_id) {
            Receipt { event_id, position: Position::Memory { sequence }, duplicate: true }
        } else {
            let sequence = state.push(Arc::clone(&envelope));
            state.seen.insert(event_id, sequence);
            state.seen_order.push_back((now, event_id));
            Receipt { event_id, position: Position::Memory { sequence }, duplicate: false }
        };
        if copies == Copies::Two {
            state.push(envelope);
        }
        drop(state);
        self.appended.notify_waiters();
        Some(receipt)
    }
}

impl LogState {
    /// Appends `envelope` past any de-duplication, dropping the oldest beyond the retention
    /// limit; returns its sequence.
    fn push(&mut self, envelope: Arc<Envelope>) -> u64 {
        let sequence = self.first_seq + self.messages.len() as u64;
        self.messages.push_back(Stored { envelope, at: SystemTime::now() });
        if self.messages.len() > self.max_messages {
            self.messages.pop_front();
            self.first_seq += 1;
        }
        sequence
    }

    fn forget_ids_before(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.seen_order.front() {
            if now.duration_since(at) < self.duplicate_window {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&id);
        }
    }

    fn get(&self, sequence: u64) -> Option<&Stored> {
        let index = sequence.checked_sub(self.first_seq)?;
        self.messages.get(usize::try_from(index).ok()?)
    }

    /// The sequence a reader starting at `start` reads first.
    fn start_sequence(&self, start: StartAt) -> u64 {
        let skipped = match start {
            StartAt::Earliest => 0,
            StartAt::Latest => self.messages.len(),
            StartAt::Time(time) => self.messages.partition_point(|m| m.at < time),
        };
        self.first_seq + skipped as u64
    }
}

/// Publishes into a [`MemoryBus`]; the verdict is immediate unless an injected [`Fault`]
/// delays it.
#[derive(Clone)]
pub struct MemoryTransport {
    inner: Arc<Shared>,
}

impl Transport for MemoryTransport {
    async fn send(&self, topic: &Topic, envelope: Envelope, completion: Completion) {
        let sent_at = tokio::time::Instant::now();
        let fault = self.inner.faults.lock().expect("faults lock").pop_front();
        let bound = self.inner.config.verdict_timeout;
        let plan = Plan::new(fault, bound);
        let event_id = envelope.event_id();
        let stored = self.inner.log(topic).append(envelope, plan.copies);
        let outcome = match (plan.verdict, stored) {
            (Verdict::Receipt, Some(receipt)) => Ok(receipt),
            (Verdict::DuplicateReceipt, Some(receipt)) => Ok(Receipt { duplicate: true, ..receipt }),
            (Verdict::Error(kind), _) => {
                let fault = fault.expect("only an injected fault fails a publish");
                let message = match fault {
                    Fault::Nack(_) => format!("injected {fault} for event {event_id}"),
                    _ => {
                        format!("no broker verdict for event {event_id} within {bound:?} (injected {fault})")
                    }
                };
                Err(Error::new(kind, message))
            }
            (Verdict::Receipt | Verdict::DuplicateReceipt, None) => {
                unreachable!("a plan that stores nothing has no receipt")
            }
        };
        if plan.after.is_zero() {
            completion.complete(outcome);
        } else {
            self.inner.late.schedule(sent_at + plan.after, completion, outcome);
        }
    }

    fn max_payload(&self) -> usize {
        self.inner.config.max_payload
    }

    /// [`MemoryConfig::verdict_timeout`].
    fn verdict_timeout(&self) -> Duration {
        self.inner.config.verdict_timeout
    }
}

/// A message received from a [`MemoryBus`] subscription.
pub struct MemoryDelivery {
    envelope: Arc<Envelope>,
    sequence: u64,
    stored_at: SystemTime,
    group: Arc<Mutex<GroupState>>,
}

impl MemoryDelivery {
    /// The event's position in its topic, as in its [`Position::Memory`] receipt.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl Delivery for MemoryDelivery {
    fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    async fn ack(self) -> Result<(), Error> {
        self.group.lock().expect("group lock").acked.complete(self.sequence);
        Ok(())
    }

    fn position(&self) -> Option<Position> {
        Some(Position::Memory { sequence: self.sequence })
    }
}

/// Rewinds the group to its committed position when its last subscriber leaves, so events
/// handed out but never acknowledged are delivered again.
struct SubscriberGuard(Arc<Mutex<GroupState>>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        let mut group = self.0.lock().expect("group lock");
        group.subscribers -= 1;
        if group.subscribers == 0 {
            group.cursor = group.acked.committed();
        }
    }
}

impl Bus for MemoryBus {
    type Transport = MemoryTransport;
    type Delivery = MemoryDelivery;

    fn name(&self) -> &'static str {
        "memory"
    }

    fn publisher(&self, config: PublisherConfig) -> Publisher<MemoryTransport> {
        Publisher::new(MemoryTransport { inner: Arc::clone(&self.inner) }, config)
    }

    async fn provision(&self, config: &TopicConfig) -> Result<(), Error> {
        let mut topics = self.inner.topics.lock().expect("topics lock");
        topics
            .entry(config.get_topic().clone())
            .or_insert_with(|| Arc::new(TopicLog::new(config, &self.inner.config)));
        Ok(())
    }

    /// Forgets the topic; subscriptions to it receive nothing more.
    async fn delete_topic(&self, topic: &Topic) -> Result<(), Error> {
        self.inner.topics.lock().expect("topics lock").remove(topic);
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &Topic,
        group: &str,
    ) -> Result<BoxStream<'static, MemoryDelivery>, Error> {
        Ok(self.join(topic, group, StartAt::Earliest)?.boxed())
    }

    /// Events carry no bytes here, so nothing is ever [`Undecodable`](crate::Undecodable).
    async fn read(&self, topic: &Topic, options: ReadOptions) -> Result<Reader, Error> {
        let messages = match options.get_group() {
            Some(group) => self
                .join(topic, group, options.get_start())?
                .map(|delivery| {
                    let (position, at) =
                        (Position::Memory { sequence: delivery.sequence }, delivery.stored_at);
                    Message::new(position, Some(at), Ok((*delivery.envelope).clone()))
                        .on_ack(|| delivery.ack())
                })
                .boxed(),
            None => {
                let log = self.inner.log(topic);
                let cursor = log.state.lock().expect("log lock").start_sequence(options.get_start());
                stream::unfold((log, cursor), |(log, mut cursor)| async move {
                    let message = next_message(&log, |state| {
                        cursor = cursor.max(state.first_seq);
                        let stored = state.get(cursor)?;
                        let position = Position::Memory { sequence: cursor };
                        cursor += 1;
                        Some(Message::new(position, Some(stored.at), Ok((*stored.envelope).clone())))
                    })
                    .await;
                    Some((message, (log, cursor)))
                })
                .boxed()
            }
        };
        Ok(Reader::new(messages))
    }
}

impl MemoryBus {
    /// Joins consumer `group` of `topic`, creating it at `start` when it is new.
    fn join(
        &self,
        topic: &Topic,
        group: &str,
        start: StartAt,
    ) -> Result<impl futures::Stream<Item = MemoryDelivery> + Send + 'static, Error> {
        if group.is_empty() {
            return Err(Error::new(ErrorKind::InvalidInput, "consumer group name must not be empty"));
        }
        let log = self.inner.log(topic);
        let group = {
            let mut state = log.state.lock().expect("log lock");
            let first = state.start_sequence(start);
            Arc::clone(state.groups.entry(group.to_owned()).or_insert_with(|| {
                Arc::new(Mutex::new(GroupState {
                    cursor: first,
                    acked: OffsetTracker::new(first),
                    subscribers: 0,
                }))
            }))
        };
        group.lock().expect("group lock").subscribers += 1;
        let guard = SubscriberGuard(Arc::clone(&group));
        Ok(stream::unfold((log, group, guard), |(log, group, guard)| async move {
            let delivery = next_delivery(&log, &group).await;
            Some((delivery, (log, group, guard)))
        }))
    }
}

/// Waits until `take` finds the next message in the log.
async fn next_message<T>(log: &TopicLog, mut take: impl FnMut(&LogState) -> Option<T>) -> T {
    loop {
        let appended = log.appended.notified();
        if let Some(found) = take(&log.state.lock().expect("log lock")) {
            return found;
        }
        appended.await;
    }
}

async fn next_delivery(log: &TopicLog, group: &Arc<Mutex<GroupState>>) -> MemoryDelivery {
    next_message(log, |state| {
        let mut g = group.lock().expect("group lock");
        // Retention may have dropped events the group never read or acknowledged: skip to the
        // oldest kept, and count the dropped ones as done, or every later acknowledgement
        // would wait behind them in the tracker for ever.
        g.cursor = g.cursor.max(state.first_seq);
        g.acked.skip_to(state.first_seq);
        let stored = state.get(g.cursor)?;
        let sequence = g.cursor;
        g.cursor += 1;
        Some(MemoryDelivery {
            envelope: Arc::clone(&stored.envelope),
            sequence,
            stored_at: stored.at,
            group: Arc::clone(group),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt as _, StreamExt as _};

    use super::*;

    fn order(n: usize) -> Envelope {
        Envelope::builder("order", format!("order-{n}"), "Placed").build().unwrap()
    }

    /// A publisher on a bus whose verdicts take at most 500 ms, and a topic.
    fn setup() -> (MemoryBus, Publisher<MemoryTransport>, Topic) {
        let bus = MemoryBus::new(MemoryConfig::default().verdict_timeout(Duration::from_millis(500)));
        let publisher = bus.publisher(PublisherConfig::default());
        (bus, publisher, Topic::new("faults").unwrap())
    }

    #[test]
    fn the_transport_reports_the_configured_verdict_bound() {
        let bus = MemoryBus::new(MemoryConfig::default().verdict_timeout(Duration::from_secs(3)));
        let publisher = bus.publisher(PublisherConfig::default());
        assert_eq!(publisher.verdict_timeout(), Duration::from_secs(3));
        assert_eq!(MemoryConfig::default().get_verdict_timeout(), Duration::from_millis(500));
    }

    /// A withheld verdict does not hold up the publishing caller, and arrives at the bound.
    #[tokio::test(start_paused = true)]
    async fn a_stall_stores_nothing_and_times_out_at_the_bound_without_blocking_the_caller() {
        let (bus, publisher, topic) = setup();
        bus.inject(Fault::Stall, 1);
        let start = tokio::time::Instant::now();
        let ack = publisher.publish(&topic, order(0)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "publish returned at once");
        let err = ack.await.unwrap_err();
        assert_eq!((err.kind(), start.elapsed()), (ErrorKind::Timeout, Duration::from_millis(500)));
        assert!(err.message().contains("injected stall"), "{err}");
        assert!(bus.events(&topic).is_empty());
        assert_eq!(bus.faults_left(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_ack_arrives_after_the_delay_and_later_publishes_are_not_held_up() {
        let (bus, publisher, topic) = setup();
        bus.inject(Fault::DelayedAck(Duration::from_millis(200)), 1);
        let start = tokio::time::Instant::now();
        let delayed = publisher.publish(&topic, order(0)).await.unwrap();
        let prompt = publisher.publish(&topic, order(1)).await.unwrap().await.unwrap();
        assert_eq!(
            (prompt.position.clone(), start.elapsed()),
            (Position::Memory { sequence: 2 }, Duration::ZERO)
        );
        assert_eq!(bus.events(&topic).len(), 2, "stored before its ACK arrives");
        let receipt = delayed.await.unwrap();
        assert_eq!(
            (receipt.position, start.elapsed()),
            (Position::Memory { sequence: 1 }, Duration::from_millis(200))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_delayed_past_the_bound_times_out_but_the_event_is_stored() {
        let (bus, publisher, topic) = setup();
        bus.inject(Fault::DelayedAck(Duration::from_secs(60)), 1);
        let start = tokio::time::Instant::now();
        let err = publisher.publish(&topic, order(0)).await.unwrap().await.unwrap_err();
        assert_eq!((err.kind(), start.elapsed()), (ErrorKind::Timeout, Duration::from_millis(500)));
        assert_eq!(bus.events(&topic).len(), 1);
    }

    #[tokio::test]
    async fn a_nack_stores_nothing() {
        let (bus, publisher, topic) = setup();
        bus.inject(Fault::Nack(ErrorKind::Rejected), 1);
        let err = publisher.publish(&topic, order(0)).await.unwrap().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert!(err.message().contains("injected NACK (rejected)"), "{err}");
        assert!(bus.events(&topic).is_empty());
    }

    #[tokio::test]
    async fn a_duplicate_ack_stores_once_and_says_duplicate() {
        let (bus, publisher, topic) = setup();
        bus.inject(Fault::DuplicateAck, 1);
        let receipt = publisher.publish(&topic, order(0)).await.unwrap().await.unwrap();
        assert!(receipt.duplicate);
        assert_eq!(bus.events(&topic).len(), 1);
    }

    /// The second copy bypasses de-duplication: consumers get the event twice, and a later
    /// re-publish is still recognised as a duplicate of the first copy.
    #[tokio::test]
    async fn a_duplicate_delivery_reaches_consumers_twice() {
        let (bus, publisher, topic) = setup();
        bus.inject(Fault::DuplicateDelivery, 1);
        let event = order(0);
        let receipt = publisher.publish(&topic, event.clone()).await.unwrap().await.unwrap();
        assert_eq!((receipt.position, receipt.duplicate), (Position::Memory { sequence: 1 }, false));
        let ids: Vec<EventId> = bus.events(&topic).iter().map(|e| e.event_id()).collect();
        assert_eq!(ids, vec![event.event_id(); 2]);
        let again = publisher.publish(&topic, event).await.unwrap().await.unwrap();
        assert_eq!((again.position, again.duplicate), (Position::Memory { sequence: 1 }, true));
    }

    /// Faults apply in the order injected, one publish each.
    #[tokio::test(start_paused = true)]
    async fn faults_apply_in_order_then_publishes_are_healthy() {
        let (bus, publisher, topic) = setup();
        bus.inject(Fault::Nack(ErrorKind::Unavailable), 1);
        bus.inject(Fault::LostAck, 1);
        assert_eq!(bus.faults_left(), 2);
        let mut kinds = Vec::new();
        for n in 0..3 {
            let outcome = publisher.publish(&topic, order(n)).await.unwrap().await;
            kinds.push(outcome.err().map(|e| e.kind()));
        }
        assert_eq!(kinds, vec![Some(ErrorKind::Unavailable), Some(ErrorKind::Timeout), None]);
        assert_eq!(bus.events(&topic).len(), 2, "the lost ACK's event and the healthy one");
    }

    async fn publish_orders(bus: &MemoryBus, topic: &Topic, numbers: std::ops::Range<usize>) {
        let publisher = bus.publisher(PublisherConfig::default());
        for n in numbers {
            publisher.publish(topic, order(n)).await.unwrap().await.unwrap();
        }
    }

    async fn next_ids(reader: &mut Reader, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let message = reader.next().await.unwrap();
            ids.push(message.content().unwrap().aggregate_id().to_owned());
            message.ack().await.unwrap();
        }
        ids
    }

    /// An ephemeral reader starts where asked and leaves no group behind.
    #[tokio::test]
    async fn ephemeral_readers_start_at_the_start_the_end_or_a_time() {
        let bus = MemoryBus::default();
        let topic = Topic::new("reads").unwrap();
        publish_orders(&bus, &topic, 0..2).await;
        let between = SystemTime::now();
        publish_orders(&bus, &topic, 2..3).await;
        let mut earliest = bus.read(&topic, ReadOptions::new(StartAt::Earliest)).await.unwrap();
        let mut latest = bus.read(&topic, ReadOptions::new(StartAt::Latest)).await.unwrap();
        let mut by_time = bus.read(&topic, ReadOptions::new(StartAt::Time(between))).await.unwrap();
        publish_orders(&bus, &topic, 3..4).await;
        assert_eq!(next_ids(&mut earliest, 4).await, ["order-0", "order-1", "order-2", "order-3"]);
        assert_eq!(next_ids(&mut latest, 1).await, ["order-3"]);
        assert_eq!(next_ids(&mut by_time, 2).await, ["order-2", "order-3"]);
        let first = earliest.next().now_or_never();
        assert!(first.is_none(), "nothing more to read");
        assert!(bus.inner.log(&topic).state.lock().unwrap().groups.is_empty());
    }

    /// A group reader resumes after what an earlier reader of the group acknowledged; its start
    /// applies only to a new group.
    #[tokio::test]
    async fn a_group_reader_resumes_after_acknowledged_messages() {
        let bus = MemoryBus::default();
        let topic = Topic::new("group-reads").unwrap();
        publish_orders(&bus, &topic, 0..3).await;
        let options = ReadOptions::new(StartAt::Latest).group("audit");
        let mut first = bus.read(&topic, options.clone()).await.unwrap();
        publish_orders(&bus, &topic, 3..5).await;
        assert_eq!(next_ids(&mut first, 1).await, ["order-3"]);
        let message = first.next().await.unwrap();
        assert_eq!(message.position(), &Position::Memory { sequence: 5 });
        drop((message, first)); // read, not acknowledged
        let mut second = bus.read(&topic, options.clone()).await.unwrap();
        assert_eq!(next_ids(&mut second, 1).await, ["order-4"]);
        let earliest = ReadOptions::new(StartAt::Earliest).group("audit");
        drop(second);
        let mut third = bus.read(&topic, earliest).await.unwrap();
        assert!(third.next().now_or_never().is_none(), "the group's position, not the start, applies");
    }

    /// Events retention dropped before the group read them must not hold back the group's
    /// committed position: the acknowledgements after them would pile up for ever.
    #[tokio::test]
    async fn acknowledgements_after_events_dropped_unread_do_not_pile_up() {
        let bus = MemoryBus::new(MemoryConfig::default().max_messages(10));
        let topic = Topic::new("retained").unwrap();
        // The group exists before the events arrive, then falls 20 behind the retention limit.
        let mut deliveries = bus.subscribe(&topic, "billing").await.unwrap();
        let publisher = bus.publisher(PublisherConfig::default());
        for i in 0..30 {
            let event = Envelope::builder("order", format!("order-{i}"), "Placed").build().unwrap();
            publisher.publish(&topic, event).await.unwrap().await.unwrap();
        }
        for _ in 0..10 {
            deliveries.next().await.unwrap().ack().await.unwrap();
        }
        let log = bus.inner.log(&topic);
        let state = log.state.lock().unwrap();
        let group = state.groups["billing"].lock().unwrap();
        assert_eq!((group.acked.committed(), group.acked.waiting()), (31, 0));
    }
}
