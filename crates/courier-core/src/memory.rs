//! The in-memory bus: a per-topic log with sequences, de-duplication by event id, and consumer
//! groups with committed positions, giving tests and single-process apps the brokers' semantics.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::Notify;

use crate::bus::{Bus, TopicConfig};
use crate::dispatch::Delivery;
use crate::{
    Completion, Envelope, Error, ErrorKind, EventId, EventIdMap, OffsetTracker, Position, Publisher,
    PublisherConfig, Receipt, Topic, Transport, DEFAULT_MAX_PAYLOAD,
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
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { max_payload: DEFAULT_MAX_PAYLOAD, max_messages: 1_000_000 }
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
    /// Injected failures for the next publishes, for testing retry paths of callers.
    faults: Mutex<VecDeque<ErrorKind>>,
}

struct TopicLog {
    state: Mutex<LogState>,
    appended: Notify,
}

struct LogState {
    /// Sequence of `messages[0]`; sequences start at 1.
    first_seq: u64,
    messages: VecDeque<Arc<Envelope>>,
    max_messages: usize,
    duplicate_window: Duration,
    /// Event id → sequence, for ids published within the duplicate window.
    seen: EventIdMap<EventId, u64>,
    seen_order: VecDeque<(Instant, EventId)>,
    groups: HashMap<String, Arc<Mutex<GroupState>>>,
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

    /// Makes each of the next `count` publishes fail with `kind` instead of being stored, so
    /// callers can exercise their retry and dead-letter paths against this bus.
    pub fn inject_faults(&self, kind: ErrorKind, count: usize) {
        self.inner.faults.lock().expect("faults lock").extend(std::iter::repeat_n(kind, count));
    }

    /// Every event currently stored in `topic`, oldest first.
    pub fn events(&self, topic: &Topic) -> Vec<Arc<Envelope>> {
        let log = self.inner.log(topic);
        let state = log.state.lock().expect("log lock");
        state.messages.iter().cloned().collect()
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

    /// Stores the event unless its id was seen within the duplicate window.
    fn append(&self, envelope: Envelope) -> Receipt {
        let event_id = envelope.event_id();
        let mut state = self.state.lock().expect("log lock");
        let now = Instant::now();
        state.forget_ids_before(now);
        if let Some(&sequence) = state.seen.get(&event_id) {
            return Receipt { event_id, position: Position::Memory { sequence }, duplicate: true };
        }
        let sequence = state.first_seq + state.messages.len() as u64;
        state.messages.push_back(Arc::new(envelope));
        if state.messages.len() > state.max_messages {
            state.messages.pop_front();
            state.first_seq += 1;
        }
        state.seen.insert(event_id, sequence);
        state.seen_order.push_back((now, event_id));
        drop(state);
        self.appended.notify_waiters();
        Receipt { event_id, position: Position::Memory { sequence }, duplicate: false }
    }
}

impl LogState {
    fn forget_ids_before(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.seen_order.front() {
            if now.duration_since(at) < self.duplicate_window {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&id);
        }
    }

    fn get(&self, sequence: u64) -> Option<&Arc<Envelope>> {
        let index = sequence.checked_sub(self.first_seq)?;
        self.messages.get(usize::try_from(index).ok()?)
    }
}

/// Publishes into a [`MemoryBus`]; the verdict is immediate.
#[derive(Clone)]
pub struct MemoryTransport {
    inner: Arc<Shared>,
}

impl Transport for MemoryTransport {
    async fn send(&self, topic: &Topic, envelope: Envelope, completion: Completion) {
        let fault = self.inner.faults.lock().expect("faults lock").pop_front();
        let outcome = match fault {
            Some(kind) => Err(Error::new(kind, format!("injected {kind} for event {}", envelope.event_id()))),
            None => Ok(self.inner.log(topic).append(envelope)),
        };
        completion.complete(outcome);
    }

    fn max_payload(&self) -> usize {
        self.inner.config.max_payload
    }

    /// The verdict is given in `send` itself.
    fn verdict_timeout(&self) -> Duration {
        Duration::ZERO
    }
}

/// A message received from a [`MemoryBus`] subscription.
pub struct MemoryDelivery {
    envelope: Arc<Envelope>,
    sequence: u64,
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
        if group.is_empty() {
            return Err(Error::new(ErrorKind::InvalidInput, "consumer group name must not be empty"));
        }
        let log = self.inner.log(topic);
        let group = {
            let mut state = log.state.lock().expect("log lock");
            let first = state.first_seq;
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
        })
        .boxed())
    }
}

async fn next_delivery(log: &TopicLog, group: &Arc<Mutex<GroupState>>) -> MemoryDelivery {
    loop {
        let appended = log.appended.notified();
        {
            let state = log.state.lock().expect("log lock");
            let mut g = group.lock().expect("group lock");
            // Retention may have dropped events the group never read or acknowledged: skip to the
            // oldest kept, and count the dropped ones as done, or every later acknowledgement
            // would wait behind them in the tracker for ever.
            g.cursor = g.cursor.max(state.first_seq);
            g.acked.skip_to(state.first_seq);
            if let Some(envelope) = state.get(g.cursor) {
                let sequence = g.cursor;
                g.cursor += 1;
                return MemoryDelivery { envelope: Arc::clone(envelope), sequence, group: Arc::clone(group) };
            }
        }
        appended.await;
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

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
