//! Event ids acknowledged recently, per topic, so a re-publish from the same bus is answered as a
//! duplicate with the stored position instead of being written twice (Kafka itself has no
//! de-duplication by event id).
//!
//! Ids are remembered in generations rather than each with its own expiry: a generation ends
//! after `window` or after half the capacity of new ids, and ids older than the previous
//! generation are swept out then, in one pass. An insert (once per delivery report, on the
//! producer's polling thread) is then one map insert, where expiring each id on its own would add
//! a queue entry, a removal and a clock read per event.

use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use courier_core::{EventId, EventIdMap, Position, Topic};

pub(crate) struct Dedup {
    window: Duration,
    /// New ids per generation: half the capacity, so two generations fit in it.
    generation_size: usize,
    state: Mutex<Generations>,
}

struct Generations {
    ids: EventIdMap<Key, (Position, u64)>,
    /// The current generation's number, when it began and how many ids it added.
    current: u64,
    started: Instant,
    added: usize,
}

/// An event id in a topic. Hashed by the id alone: ids are unique and random, while hashing the
/// topic name would cost more than the rest of a lookup.
#[derive(PartialEq, Eq)]
struct Key {
    event_id: EventId,
    topic: Topic,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.event_id.hash(state);
    }
}

impl Dedup {
    /// Remembers each id for at least `window` (unless `capacity / 2` newer ids arrive first);
    /// older ids are forgotten as new ones arrive, and at most `capacity` are held. A zero
    /// window or capacity turns it off.
    pub(crate) fn new(window: Duration, capacity: usize) -> Self {
        // Sized for every id it will hold: grown instead, the map rehashes every id it holds at
        // each doubling while a new producer's first `capacity` events are acknowledged. Its
        // pages are only mapped, not touched, until ids fill them.
        let capacity = if window.is_zero() { 0 } else { capacity };
        let ids = EventIdMap::with_capacity_and_hasher(capacity, Default::default());
        let state = Generations { ids, current: 0, started: Instant::now(), added: 0 };
        Self { window, generation_size: capacity.div_ceil(2), state: Mutex::new(state) }
    }

    fn enabled(&self) -> bool {
        !self.window.is_zero() && self.generation_size > 0
    }

    /// The stored position of `event_id` in `topic`, if it is remembered.
    pub(crate) fn get(&self, topic: &Topic, event_id: EventId) -> Option<Position> {
        if !self.enabled() {
            return None;
        }
        let key = Key { event_id, topic: topic.clone() };
        let state = self.state.lock().expect("dedup lock");
        state.ids.get(&key).map(|(position, _)| position.clone())
    }

    /// Forgets every id of `topic`, once it is deleted: a topic created again under the same
    /// name holds none of them, so a publish there is new, not a duplicate.
    pub(crate) fn forget_topic(&self, topic: &Topic) {
        let mut state = self.state.lock().expect("dedup lock");
        state.ids.retain(|key, _| key.topic != *topic);
    }

    /// Remembers that `event_id` is stored in `topic` at `position`.
    pub(crate) fn insert(&self, topic: &Topic, event_id: EventId, position: &Position) {
        if !self.enabled() {
            return;
        }
        let now = Instant::now();
        let mut state = self.state.lock().expect("dedup lock");
        if state.added >= self.generation_size || now.duration_since(state.started) >= self.window {
            // The previous generation ends its second span: forget it.
            let previous = state.current;
            state.ids.retain(|_, (_, generation)| *generation >= previous);
            state.current += 1;
            state.started = now;
            state.added = 0;
        }
        let generation = state.current;
        state.added += 1;
        state.ids.insert(Key { event_id, topic: topic.clone() }, (position.clone(), generation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_topic_is_forgotten_and_others_are_kept() {
        let dedup = Dedup::new(Duration::from_secs(60), 100);
        let (orders, payments) = (Topic::new("orders").unwrap(), Topic::new("payments").unwrap());
        let (a, b) = (EventId::new(), EventId::new());
        dedup.insert(&orders, a, &at(1));
        dedup.insert(&payments, b, &at(2));
        dedup.forget_topic(&orders);
        assert_eq!(dedup.get(&orders, a), None);
        assert_eq!(dedup.get(&payments, b), Some(at(2)));
    }

    fn at(offset: i64) -> Position {
        Position::Partition { partition: 0, offset }
    }

    #[test]
    fn remembers_per_topic_for_two_generations_of_capacity() {
        let dedup = Dedup::new(Duration::from_secs(60), 4);
        let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
        let ids: Vec<EventId> = (0..6).map(|_| EventId::new()).collect();
        dedup.insert(&a, ids[0], &at(0));
        assert_eq!(dedup.get(&a, ids[0]), Some(at(0)));
        assert_eq!(dedup.get(&b, ids[0]), None, "the same id in another topic is another event");
        dedup.insert(&b, ids[0], &at(7));
        // Generations of two ids: ids[0] in both topics make the first, 1-2 the second, 3 a third.
        for (i, id) in ids.iter().enumerate().take(4).skip(1) {
            dedup.insert(&a, *id, &at(i as i64));
        }
        assert_eq!(dedup.get(&a, ids[0]), None, "forgotten two generations later");
        assert_eq!(dedup.get(&b, ids[0]), None);
        for (i, id) in ids.iter().enumerate().take(4).skip(1) {
            assert_eq!(dedup.get(&a, *id), Some(at(i as i64)), "the last two generations are kept");
        }
    }

    #[test]
    fn forgets_after_two_windows_and_can_be_off() {
        let dedup = Dedup::new(Duration::from_millis(20), 100);
        let topic = Topic::new("t").unwrap();
        let (old, new) = (EventId::new(), EventId::new());
        dedup.insert(&topic, old, &at(1));
        std::thread::sleep(Duration::from_millis(25));
        dedup.insert(&topic, new, &at(2));
        assert_eq!(dedup.get(&topic, old), Some(at(1)), "kept for at least the window");
        std::thread::sleep(Duration::from_millis(25));
        dedup.insert(&topic, EventId::new(), &at(3));
        assert_eq!(dedup.get(&topic, old), None, "forgotten within two windows");
        assert_eq!(dedup.get(&topic, new), Some(at(2)));

        let off = Dedup::new(Duration::ZERO, 10);
        off.insert(&topic, old, &at(1));
        assert_eq!(off.get(&topic, old), None);
    }
}
