//! Commit positions over out-of-order completions: the committed position only advances over the
//! contiguous prefix of completed offsets, never past one still in progress or failed.

use std::collections::BTreeSet;

/// Tracks completed offsets of one partition or stream, starting at a committed position.
#[derive(Debug, Clone)]
pub struct OffsetTracker {
    /// Every offset below this one is completed.
    committed: u64,
    /// Completed offsets at or above `committed`, waiting for the gap before them to close.
    done: BTreeSet<u64>,
}

impl OffsetTracker {
    /// Starts with every offset below `committed` already completed.
    pub fn new(committed: u64) -> Self {
        Self { committed, done: BTreeSet::new() }
    }

    /// Marks `offset` completed; returns the new committed position if it advanced.
    pub fn complete(&mut self, offset: u64) -> Option<u64> {
        if offset < self.committed {
            return None;
        }
        self.done.insert(offset);
        let before = self.committed;
        while self.done.remove(&self.committed) {
            self.committed += 1;
        }
        (self.committed != before).then_some(self.committed)
    }

    /// Counts every offset below `offset` as completed, as when retention dropped them unread:
    /// they can never complete, and completions behind them would otherwise wait for ever.
    pub fn skip_to(&mut self, offset: u64) {
        if offset <= self.committed {
            return;
        }
        self.done = self.done.split_off(&offset);
        self.committed = offset;
        while self.done.remove(&self.committed) {
            self.committed += 1;
        }
    }

    /// The next offset to deliver after a restart: everything below it is completed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Completed offsets still waiting behind a gap.
    pub fn waiting(&self) -> usize {
        self.done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_only_over_contiguous_prefix() {
        let mut t = OffsetTracker::new(10);
        assert_eq!(t.complete(11), None);
        assert_eq!(t.complete(12), None);
        assert_eq!(t.committed(), 10);
        assert_eq!(t.complete(10), Some(13));
        assert_eq!(t.complete(5), None);
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn skipping_drops_what_waits_below_and_joins_what_follows() {
        let mut t = OffsetTracker::new(1);
        for offset in [3, 4, 8, 9] {
            assert_eq!(t.complete(offset), None);
        }
        t.skip_to(8);
        assert_eq!((t.committed(), t.waiting()), (10, 0));
        t.skip_to(5);
        assert_eq!(t.committed(), 10, "never moves back");
    }
}
