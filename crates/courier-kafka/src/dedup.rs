//! Event ids acknowledged recently, per topic, so a re-publish from the same bus is answered as a
//! duplicate with the stored position instead of being written twice (Kafka itself has no
//! de-duplication by event id).
//!
//! Every published event is looked up before its send and remembered after its delivery report, on
//! two threads. With both threads entering one shared map, each delivery report wrote to a cold
//! line of the map under the lock the sending thread was waiting for: 0.35–0.9 µs of CPU per event,
//! a tenth to a sixth of the whole publish path (measured with `courier bench bus --backend
//! kafka`). So the delivery thread only appends to a short list, and the map belongs to the
//! look-ups, each of which first enters the list: the map's lines stay in one core's cache. An
//! entry is 40 bytes and holds no reference-counted topic, and an event's [`Key`] is made once,
//! before its send, and carried to its delivery report.
//!
//! Ids are remembered in generations rather than each with its own expiry: a generation ends
//! after `window` or after half the capacity of new ids, and ids older than the previous
//! generation are swept out then, in one pass. The clock is read once per [`CLOCK_STRIDE`]
//! ids remembered, not per id: a generation may then outlast its window by a few ids, which
//! only remembers them longer.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use courier_core::{EventId, EventIdMap, Position, Topic};

/// Ids remembered between two readings of the clock.
const CLOCK_STRIDE: usize = 64;

pub(crate) struct Dedup {
    window: Duration,
    /// New ids per generation: half the capacity, so two generations fit in it.
    generation_size: usize,
    remembered: Mutex<Generations>,
    /// Ids acknowledged since the last look-up; at most `generation_size`, beyond which the
    /// delivery thread enters them itself.
    acknowledged: Mutex<Vec<Acknowledged>>,
}

struct Generations {
    ids: EventIdMap<Key, Stored>,
    /// The current generation's number (wrapping), when it began and how many ids it added.
    current: u32,
    started: Instant,
    added: usize,
    /// An empty list traded for the full one at each look-up, so neither is reallocated.
    spare: Vec<Acknowledged>,
}

/// An event id in a topic, the topic stood for by a 64-bit SipHash of its name. Two topics
/// would be confused only if they carried the same event id and their names' hashes collided
/// (about 2^-64 for a pair). Hashed into the map by the id alone: ids are unique and random.
#[derive(PartialEq, Eq)]
pub(crate) struct Key {
    event_id: EventId,
    topic: u64,
}

impl Key {
    /// Made once per event, before its send, and carried to its delivery report: the topic is
    /// hashed once.
    pub(crate) fn new(topic: &Topic, event_id: EventId) -> Self {
        Self { event_id, topic: topic_hash(topic) }
    }
}

fn topic_hash(topic: &Topic) -> u64 {
    // Fixed keys: the same name gives the same hash on both threads and for every call.
    BuildHasherDefault::<DefaultHasher>::default().hash_one(topic.as_str())
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.event_id.hash(state);
    }
}

/// Where Kafka stored an event.
#[derive(Clone, Copy)]
struct Location {
    partition: i32,
    offset: i64,
}

/// A location, and the generation that remembered it.
struct Stored {
    location: Location,
    generation: u32,
}

/// An id acknowledged since the last look-up.
type Acknowledged = (Key, Location);

impl Dedup {
    /// Remembers each id for at least `window` (unless `capacity / 2` newer ids arrive first);
    /// older ids are forgotten as new ones arrive, and at most `capacity` are held. A zero
    /// window or capacity turns it off.
    pub(crate) fn new(window: Duration, capacity: usize) -> Self {
        let capacity = if window.is_zero() { 0 } else { capacity };
        let generation_size = capacity.div_ceil(2);
        // Sized for every id it will hold: grown instead, the map rehashes every id it holds at
        // each doubling while a new producer's first `capacity` events are acknowledged. Its
        // pages are only mapped, not touched, until ids fill them.
        let ids = EventIdMap::with_capacity_and_hasher(capacity, Default::default());
        let remembered =
            Generations { ids, current: 0, started: Instant::now(), added: 0, spare: Vec::new() };
        Self {
            window,
            generation_size,
            remembered: Mutex::new(remembered),
            acknowledged: Mutex::new(Vec::new()),
        }
    }

    fn enabled(&self) -> bool {
        // Zero when the window or the capacity is.
        self.generation_size > 0
    }

    /// The stored position of the event `key` names, if it is remembered.
    pub(crate) fn get(&self, key: &Key) -> Option<Position> {
        if !self.enabled() {
            return None;
        }
        let remembered = self.caught_up();
        let Location { partition, offset } = remembered.ids.get(key)?.location;
        Some(Position::Partition { partition, offset })
    }

    /// Forgets every id of `topic`, once it is deleted: a topic created again under the same
    /// name holds none of them, so a publish there is new, not a duplicate.
    pub(crate) fn forget_topic(&self, topic: &Topic) {
        let topic = topic_hash(topic);
        self.caught_up().ids.retain(|key, _| key.topic != topic);
    }

    /// Remembers that the event `key` names is stored at `partition` and `offset`.
    pub(crate) fn insert(&self, key: Key, partition: i32, offset: i64) {
        if !self.enabled() {
            return;
        }
        let mut acknowledged = self.acknowledged.lock().expect("dedup lock");
        acknowledged.push((key, Location { partition, offset }));
        if acknowledged.len() >= self.generation_size {
            // Nothing was looked up for a while: enter them now, to bound the list.
            drop(acknowledged);
            drop(self.caught_up());
        }
    }

    /// The remembered ids, with those acknowledged since the last look-up entered.
    fn caught_up(&self) -> MutexGuard<'_, Generations> {
        let mut remembered = self.remembered.lock().expect("dedup lock");
        // The list is traded for the empty spare: the delivery thread waits for a swap only.
        let mut batch = std::mem::take(&mut remembered.spare);
        std::mem::swap(&mut batch, &mut self.acknowledged.lock().expect("dedup lock"));
        for (key, location) in batch.drain(..) {
            remembered.remember(key, location, self.window, self.generation_size);
        }
        remembered.spare = batch;
        remembered
    }
}

impl Generations {
    fn remember(&mut self, key: Key, location: Location, window: Duration, generation_size: usize) {
        let full = self.added >= generation_size;
        if full || (self.added.is_multiple_of(CLOCK_STRIDE) && self.started.elapsed() >= window) {
            // The previous generation ends its second span: forget it.
            let current = self.current;
            self.ids.retain(|_, stored| stored.generation == current);
            self.current = current.wrapping_add(1);
            self.started = Instant::now();
            self.added = 0;
        }
        self.added += 1;
        self.ids.insert(key, Stored { location, generation: self.current });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Option<Position> {
        Some(Position::Partition { partition: 0, offset })
    }

    #[test]
    fn a_deleted_topic_is_forgotten_and_others_are_kept() {
        let dedup = Dedup::new(Duration::from_secs(60), 100);
        let (orders, payments) = (Topic::new("orders").unwrap(), Topic::new("payments").unwrap());
        let (a, b) = (EventId::new(), EventId::new());
        dedup.insert(Key::new(&orders, a), 0, 1);
        dedup.insert(Key::new(&payments, b), 0, 2);
        dedup.forget_topic(&orders);
        assert_eq!(dedup.get(&Key::new(&orders, a)), None);
        assert_eq!(dedup.get(&Key::new(&payments, b)), at(2));
    }

    #[test]
    fn remembers_per_topic_for_two_generations_of_capacity() {
        let dedup = Dedup::new(Duration::from_secs(60), 4);
        let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
        let ids: Vec<EventId> = (0..6).map(|_| EventId::new()).collect();
        dedup.insert(Key::new(&a, ids[0]), 3, 0);
        assert_eq!(dedup.get(&Key::new(&a, ids[0])), Some(Position::Partition { partition: 3, offset: 0 }));
        assert_eq!(dedup.get(&Key::new(&b, ids[0])), None, "the same id in another topic is another event");
        dedup.insert(Key::new(&b, ids[0]), 0, 7);
        assert_eq!(dedup.get(&Key::new(&b, ids[0])), at(7));
        // Generations of two ids: ids[0] in both topics make the first, 1-2 the second, 3 a third.
        for (i, id) in ids.iter().enumerate().take(4).skip(1) {
            dedup.insert(Key::new(&a, *id), 0, i as i64);
        }
        assert_eq!(dedup.get(&Key::new(&a, ids[0])), None, "forgotten two generations later");
        assert_eq!(dedup.get(&Key::new(&b, ids[0])), None);
        for (i, id) in ids.iter().enumerate().take(4).skip(1) {
            assert_eq!(dedup.get(&Key::new(&a, *id)), at(i as i64), "the last two generations are kept");
        }
    }

    #[test]
    fn forgets_after_two_windows_read_every_clock_stride_and_can_be_off() {
        let dedup = Dedup::new(Duration::from_millis(20), 1000);
        let topic = Topic::new("t").unwrap();
        // Acknowledges ids up to the next reading of the clock.
        let fill = |dedup: &Dedup| {
            for _ in 1..CLOCK_STRIDE {
                dedup.insert(Key::new(&topic, EventId::new()), 1, 0);
            }
        };
        // Ids enter the generations at the look-up after their acknowledgement.
        let (old, new) = (EventId::new(), EventId::new());
        dedup.insert(Key::new(&topic, old), 0, 1);
        fill(&dedup);
        assert_eq!(dedup.get(&Key::new(&topic, old)), at(1));
        std::thread::sleep(Duration::from_millis(25));
        dedup.insert(Key::new(&topic, new), 0, 2);
        assert_eq!(dedup.get(&Key::new(&topic, old)), at(1), "kept for at least the window");
        std::thread::sleep(Duration::from_millis(25));
        dedup.insert(Key::new(&topic, EventId::new()), 0, 3);
        assert_eq!(dedup.get(&Key::new(&topic, old)), at(1), "the clock is not read between strides");
        fill(&dedup);
        dedup.insert(Key::new(&topic, EventId::new()), 0, 4);
        assert_eq!(
            dedup.get(&Key::new(&topic, old)),
            None,
            "forgotten at the first reading after two windows"
        );
        assert_eq!(dedup.get(&Key::new(&topic, new)), at(2));

        let off = Dedup::new(Duration::ZERO, 10);
        off.insert(Key::new(&topic, old), 0, 1);
        assert_eq!(off.get(&Key::new(&topic, old)), None);
    }

    #[test]
    fn ids_acknowledged_on_another_thread_are_found_by_the_next_look_up() {
        let dedup = std::sync::Arc::new(Dedup::new(Duration::from_secs(60), 100_000));
        let topic = Topic::new("t").unwrap();
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::new()).collect();
        let delivery = {
            let (dedup, topic, ids) = (dedup.clone(), topic.clone(), ids.clone());
            std::thread::spawn(move || {
                for (offset, id) in ids.into_iter().enumerate() {
                    dedup.insert(Key::new(&topic, id), 0, offset as i64);
                }
            })
        };
        delivery.join().unwrap();
        for (offset, id) in ids.iter().enumerate() {
            assert_eq!(dedup.get(&Key::new(&topic, *id)), at(offset as i64));
        }
    }

    #[test]
    fn without_look_ups_the_acknowledged_list_stays_under_half_the_capacity() {
        let dedup = Dedup::new(Duration::from_secs(60), 100);
        let topic = Topic::new("t").unwrap();
        let ids: Vec<EventId> = (0..120).map(|_| EventId::new()).collect();
        for (offset, id) in ids.iter().enumerate() {
            dedup.insert(Key::new(&topic, *id), 0, offset as i64);
            assert!(dedup.acknowledged.lock().unwrap().len() < 50);
        }
        assert_eq!(dedup.get(&Key::new(&topic, ids[0])), None, "forgotten two generations later");
        assert_eq!(dedup.get(&Key::new(&topic, ids[119])), at(119));
    }
}
