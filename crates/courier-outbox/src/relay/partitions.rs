//! Which partitions the relay works on, as the lease keeper reports leases won, lost and to
//! hand over. Pure: the engine feeds it lease events and scan results.
//!
//! A partition is *owned* from its lease's acquisition until it is lost or handed over. A new
//! one is scanned for blocked aggregates first and only then *active* (claimed and published);
//! a scan finishing after the lease was lost must not make it active again. One handed over is
//! *draining* until nothing of it is left in memory, then released.

use std::collections::{BTreeSet, HashSet};

#[derive(Debug, Default)]
pub(super) struct Partitions {
    /// Claimed and published.
    active: BTreeSet<i64>,
    /// Waiting for (or in) a blocked-aggregate scan before they become active.
    to_scan: BTreeSet<i64>,
    /// Being handed over: nothing new is published, in-flight rows finish.
    draining: BTreeSet<i64>,
    /// Leased to this relay, from `Acquired` until `Lost` or `Release`.
    owned: BTreeSet<i64>,
}

impl Partitions {
    pub(super) fn is_active(&self, partition: i64) -> bool {
        self.active.contains(&partition)
    }

    pub(super) fn active_count(&self) -> usize {
        self.active.len()
    }

    /// Whether partitions wait for a blocked-aggregate scan.
    pub(super) fn scan_due(&self) -> bool {
        !self.to_scan.is_empty()
    }

    /// The partitions to scan now.
    pub(super) fn take_to_scan(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.to_scan).into_iter().collect()
    }

    /// Of the partitions a scan covered, those still leased: a lease lost while it ran takes
    /// its partition out of this relay's hands.
    pub(super) fn still_owned(&self, scanned: Vec<i64>) -> Vec<i64> {
        scanned.into_iter().filter(|p| self.owned.contains(p)).collect()
    }

    /// A scan of `partitions` failed: scan them again.
    pub(super) fn rescan(&mut self, partitions: Vec<i64>) {
        self.to_scan.extend(partitions);
    }

    /// A scan of `partitions` (still owned) finished: work on them, unless handed over since.
    pub(super) fn activate(&mut self, partitions: &[i64]) {
        self.active.extend(partitions.iter().filter(|p| !self.draining.contains(p)));
    }

    pub(super) fn acquired(&mut self, partitions: Vec<i64>) {
        for p in partitions {
            self.draining.remove(&p);
            self.owned.insert(p);
            self.to_scan.insert(p);
        }
    }

    /// Operators changed dead rows in `partitions`: active ones are scanned again.
    pub(super) fn changed(&mut self, partitions: Vec<i64>) {
        self.to_scan.extend(partitions.into_iter().filter(|p| self.active.contains(p)));
    }

    /// The leases of `partitions` are gone: stop at once (the caller drops their rows).
    pub(super) fn lost(&mut self, partitions: &[i64]) {
        self.give_up(partitions);
        for p in partitions {
            self.draining.remove(p);
        }
    }

    /// `partitions` are to be handed over: drain them (the caller drops their queued rows).
    pub(super) fn release(&mut self, partitions: &[i64]) {
        self.give_up(partitions);
        self.draining.extend(partitions);
    }

    /// No longer owned, scanned or published, whether lost or handed over.
    fn give_up(&mut self, partitions: &[i64]) {
        for p in partitions {
            self.owned.remove(p);
            self.to_scan.remove(p);
            self.active.remove(p);
        }
    }

    /// Stops publishing in every partition (graceful shutdown); returns those it worked on.
    pub(super) fn stop(&mut self) -> Vec<i64> {
        let all: Vec<i64> = self.active.iter().chain(&self.draining).copied().collect();
        self.active.clear();
        all
    }

    /// The draining partitions none of `busy` (partitions with rows in memory) holds: they are
    /// drained, and no longer draining.
    pub(super) fn drained(&mut self, busy: &HashSet<i64>) -> Vec<i64> {
        let done: Vec<i64> = self.draining.iter().filter(|p| !busy.contains(p)).copied().collect();
        for p in &done {
            self.draining.remove(p);
        }
        done
    }

    pub(super) fn any_draining(&self) -> bool {
        !self.draining.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_partition_is_active_only_after_its_scan() {
        let mut partitions = Partitions::default();
        partitions.acquired(vec![3]);
        assert!(!partitions.is_active(3) && partitions.scan_due());
        let scanned = partitions.take_to_scan();
        partitions.activate(&partitions.still_owned(scanned));
        assert!(partitions.is_active(3));
    }

    /// A scan finishing after its partition's lease was lost must not revive the partition.
    #[test]
    fn a_scan_outlived_by_its_lease_activates_nothing() {
        let mut partitions = Partitions::default();
        partitions.acquired(vec![3]);
        let scanned = partitions.take_to_scan();
        partitions.lost(&[3]);
        let owned = partitions.still_owned(scanned);
        partitions.activate(&owned);
        partitions.rescan(owned);
        assert!(!partitions.is_active(3) && !partitions.scan_due());
    }

    #[test]
    fn a_handed_over_partition_drains_until_nothing_of_it_is_in_memory() {
        let mut partitions = Partitions::default();
        partitions.acquired(vec![1, 2]);
        let scanned = partitions.take_to_scan();
        partitions.activate(&partitions.still_owned(scanned));
        partitions.release(&[2]);
        assert!(!partitions.is_active(2) && partitions.is_active(1));
        assert!(partitions.drained(&HashSet::from([2])).is_empty());
        assert_eq!(partitions.drained(&HashSet::new()), vec![2]);
        assert!(!partitions.any_draining());
    }
}
