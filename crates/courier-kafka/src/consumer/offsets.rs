//! Commit and hand-out state of the partitions assigned to one consumer: pure bookkeeping,
//! shared by the polling thread, the stream, the deliveries and the commit task.
//!
//! Messages of a partition get local sequence numbers in arrival order; an [`OffsetTracker`]
//! over those numbers finds the prefix that is done (Kafka offsets may have gaps, from
//! compaction or transaction markers, so they are not tracked directly). Each assignment of a
//! partition gets a fresh id, so work begun under an earlier assignment commits nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use courier_core::{OffsetTracker, Topic};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

#[derive(Default)]
pub(super) struct Offsets {
    state: Mutex<State>,
    /// Signalled when a handed-out message is finished, for a revoke waiting on it.
    finished: Condvar,
}

#[derive(Default)]
struct State {
    partitions: HashMap<i32, PartitionOffsets>,
    next_assignment: u64,
    /// The consumer is closing: a revoke no longer waits for handlers.
    closing: bool,
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
    /// Messages handed to the application and not finished (acknowledged or dropped) yet.
    handed: u64,
}

/// Which assignment of its partition a message arrived under, and its place there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub partition: i32,
    pub assignment: u64,
    pub seq: u64,
}

impl Offsets {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("offsets lock")
    }

    /// Starts tracking newly assigned partitions (an incremental assignment names only the new
    /// ones; a partition already tracked keeps its state).
    pub fn assigned(&self, partitions: &[i32]) {
        let mut state = self.lock();
        for &partition in partitions {
            if !state.partitions.contains_key(&partition) {
                let assignment = state.next_assignment;
                state.next_assignment += 1;
                state.partitions.insert(
                    partition,
                    PartitionOffsets {
                        assignment,
                        tracker: OffsetTracker::new(0),
                        next_seq: 0,
                        offsets: VecDeque::new(),
                        done_until: None,
                        committed: None,
                        handed: 0,
                    },
                );
            }
        }
    }

    /// Registers a received message; `None` when its partition is not assigned (a message
    /// fetched before a revoke, which the new owner reads again).
    pub fn received(&self, partition: i32, offset: i64) -> Option<Slot> {
        let mut state = self.lock();
        let p = state.partitions.get_mut(&partition)?;
        let slot = Slot { partition, assignment: p.assignment, seq: p.next_seq };
        p.next_seq += 1;
        p.offsets.push_back(offset);
        Some(slot)
    }

    /// Counts `slot` as handed to the application until [`finished`](Self::finished); `false`
    /// when its partition was revoked since it arrived, so it must not be handled at all.
    pub fn hand_out(&self, slot: Slot) -> bool {
        let mut state = self.lock();
        match current(&mut state, slot) {
            Some(p) => {
                p.handed += 1;
                true
            }
            None => false,
        }
    }

    /// Marks `slot` done: its offset may be committed once every earlier one is done too.
    pub fn acked(&self, slot: Slot) {
        let mut state = self.lock();
        let Some(p) = current(&mut state, slot) else { return };
        let before = p.tracker.committed();
        if let Some(after) = p.tracker.complete(slot.seq) {
            let last = p.offsets.drain(..(after - before) as usize).next_back().expect("a done offset");
            p.done_until = Some(last + 1);
        }
    }

    /// The application let go of a handed-out `slot`, acknowledged or not.
    pub fn finished(&self, slot: Slot) {
        let mut state = self.lock();
        if let Some(p) = current(&mut state, slot) {
            p.handed -= 1;
        }
        self.finished.notify_all();
    }

    /// Waits until no message of `partitions` is still with the application, at most `timeout`
    /// (or until the consumer closes); returns how many still are.
    pub fn wait_finished(&self, partitions: &[i32], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let handed: u64 =
                partitions.iter().filter_map(|p| state.partitions.get(p)).map(|p| p.handed).sum();
            let left = deadline.saturating_duration_since(Instant::now());
            if handed == 0 || state.closing || left.is_zero() {
                return handed;
            }
            state = self.finished.wait_timeout(state, left).expect("offsets lock").0;
        }
    }

    /// From now on a revoke does not wait for handlers: the consumer is closing.
    pub fn close(&self) {
        self.lock().closing = true;
        self.finished.notify_all();
    }

    /// Offsets done but not yet confirmed committed, for `partitions` (all when `None`).
    pub fn to_commit(&self, topic: &Topic, partitions: Option<&[i32]>) -> TopicPartitionList {
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

    pub fn confirmed(&self, topic: &Topic, list: &TopicPartitionList) {
        let mut state = self.lock();
        for element in list.elements_for_topic(topic.as_str()) {
            if let (Some(p), Offset::Offset(next)) =
                (state.partitions.get_mut(&element.partition()), element.offset())
            {
                p.committed = p.committed.max(Some(next));
            }
        }
    }

    /// Stops tracking revoked partitions: later acknowledgements of their messages count for
    /// nothing.
    pub fn forget(&self, partitions: &[i32]) {
        let mut state = self.lock();
        for partition in partitions {
            state.partitions.remove(partition);
        }
    }
}

/// The state of `slot`'s partition if it is still under the assignment `slot` arrived in.
fn current(state: &mut State, slot: Slot) -> Option<&mut PartitionOffsets> {
    state.partitions.get_mut(&slot.partition).filter(|p| p.assignment == slot.assignment)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
        offsets.assigned(&[0]);
        // Offsets 10, 11, 15 (a gap, as after compaction) on partition 0.
        let received: Vec<_> = [10, 11, 15].iter().map(|&o| offsets.received(0, o).unwrap()).collect();
        offsets.acked(received[1]);
        offsets.acked(received[2]);
        assert!(committable(&offsets, &topic).is_empty(), "offset 10 is not done");
        offsets.acked(received[0]);
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
        offsets.assigned(&[1]);
        let old = offsets.received(1, 40).unwrap();
        offsets.forget(&[1]);
        offsets.acked(old);
        assert!(committable(&offsets, &topic).is_empty());
        // Re-assigned: the stale ack from the old assignment still counts for nothing.
        offsets.assigned(&[1]);
        let new = offsets.received(1, 40).unwrap();
        assert_ne!(old.assignment, new.assignment);
        offsets.acked(old);
        assert!(committable(&offsets, &topic).is_empty());
        offsets.acked(new);
        assert_eq!(committable(&offsets, &topic), vec![(1, 41)]);
    }

    #[test]
    fn messages_of_unassigned_or_revoked_partitions_are_not_handed_out() {
        let offsets = Offsets::default();
        assert_eq!(offsets.received(3, 0), None, "never assigned");
        offsets.assigned(&[3]);
        let slot = offsets.received(3, 0).unwrap();
        offsets.forget(&[3]);
        assert!(!offsets.hand_out(slot), "revoked after it arrived");
        offsets.assigned(&[3]);
        assert!(!offsets.hand_out(slot), "re-assigned since: a new assignment");
    }

    #[test]
    fn a_revoke_waits_for_handed_out_messages_of_its_partitions_only() {
        let offsets = Arc::new(Offsets::default());
        offsets.assigned(&[0, 1]);
        let on_0 = offsets.received(0, 5).unwrap();
        let on_1 = offsets.received(1, 9).unwrap();
        assert!(offsets.hand_out(on_0) && offsets.hand_out(on_1));
        assert_eq!(offsets.wait_finished(&[1], Duration::ZERO), 1);

        let handler = {
            let offsets = Arc::clone(&offsets);
            std::thread::spawn(move || {
                offsets.acked(on_1);
                offsets.finished(on_1);
            })
        };
        assert_eq!(offsets.wait_finished(&[1], Duration::from_secs(60)), 0, "partition 1's handler finished");
        handler.join().unwrap();
        assert_eq!(offsets.wait_finished(&[0], Duration::from_millis(1)), 1, "bounded: gives up");
        offsets.close();
        assert_eq!(
            offsets.wait_finished(&[0], Duration::from_secs(60)),
            1,
            "a closing consumer does not wait"
        );
    }
}
