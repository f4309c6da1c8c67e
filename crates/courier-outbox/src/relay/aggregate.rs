//! The relay's per-aggregate state: the rows queued for it, whether one of its events awaits
//! its ACK, and its park (the failed or dead event it waits behind). Pure: the engine drives it.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

use crate::row::ClaimedRow;

/// Why an aggregate is parked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Park {
    /// The failed row the aggregate resumes from.
    pub(super) row_id: i64,
    /// When the retry is due; `None` for a dead row (until requeued or discarded).
    pub(super) until: Option<Instant>,
    /// For a dead row: after how many committed outcome writes its death is in the database;
    /// `None` while not yet written. Only a scan that started after that may lift the park:
    /// an earlier one may have read the row while it was still pending.
    pub(super) recorded: Option<u64>,
}

impl Park {
    /// A retry of `row_id` due at `until`.
    pub(super) fn retry(row_id: i64, until: Instant) -> Self {
        Self { row_id, until: Some(until), recorded: None }
    }

    /// A dead `row_id`, its death in the database once `recorded` writes committed.
    pub(super) fn dead(row_id: i64, recorded: Option<u64>) -> Self {
        Self { row_id, until: None, recorded }
    }

    pub(super) fn is_dead(&self) -> bool {
        self.until.is_none()
    }

    /// Whether a blocked-rows scan started after `writes_done` committed writes shows this
    /// park's row as it is now, so that not finding it blocked means an operator lifted it.
    pub(super) fn seen_by_scan_after(&self, writes_done: u64) -> bool {
        self.recorded.is_some_and(|recorded| recorded <= writes_done)
    }

    /// Both parks of one aggregate as one: the earliest failed row, and the later retry time
    /// (a dead row waits for ever). A dead park stays unrecorded until both are.
    pub(super) fn merge(self, other: Self) -> Self {
        let recorded = match (self.is_dead(), other.is_dead()) {
            (true, true) => self.recorded.zip(other.recorded).map(|(a, b)| a.max(b)),
            (true, false) => self.recorded,
            (false, _) => other.recorded,
        };
        Self {
            row_id: self.row_id.min(other.row_id),
            until: self.until.zip(other.until).map(|(a, b)| a.max(b)),
            recorded,
        }
    }
}

/// The relay's state of one aggregate with rows in memory.
pub(super) struct Aggregate {
    pub(super) partition: i64,
    /// Claimed rows not yet handed to the broker, in id order.
    pub(super) queue: VecDeque<ClaimedRow>,
    /// One event of this aggregate awaits its ACK.
    pub(super) busy: bool,
    pub(super) park: Option<Park>,
    /// Listed in the engine's `ready` queue.
    pub(super) in_ready: bool,
}

impl Aggregate {
    pub(super) fn new(partition: i64) -> Self {
        Self { partition, queue: VecDeque::new(), busy: false, park: None, in_ready: false }
    }

    /// Drops the queued rows (they stay pending in the database) and forgets them in `known`;
    /// returns how many there were.
    pub(super) fn drop_queue(&mut self, known: &mut HashMap<i64, i64>) -> usize {
        let dropped = self.queue.len();
        for row in self.queue.drain(..) {
            known.remove(&row.id);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn merged_parks_resume_from_the_earliest_row_at_the_later_time() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let merged = Park::retry(7, later).merge(Park::retry(5, now));
        assert_eq!((merged.row_id, merged.until), (5, Some(later)));
    }

    /// A dead row waits for an operator whatever retry it is merged with, and counts as written
    /// only once its death is.
    #[test]
    fn a_dead_park_wins_and_stays_unrecorded_until_written() {
        let now = Instant::now();
        let merged = Park::retry(5, now).merge(Park::dead(7, None));
        assert!(merged.is_dead() && merged.row_id == 5);
        assert!(!merged.seen_by_scan_after(u64::MAX));
        let written = Park::dead(7, Some(3)).merge(Park::dead(9, Some(4)));
        assert!(!written.seen_by_scan_after(3) && written.seen_by_scan_after(4));
    }
}
