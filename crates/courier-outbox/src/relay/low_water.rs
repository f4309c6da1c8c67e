//! Where a caught-up claim starts reading.
//!
//! Ids are allocated at insert, rows become visible at commit: a scan can pass the id of a row
//! whose transaction is still open, which then commits behind the cursor (a commit-order gap).
//! Such a row's id is higher than every id any scan had returned when it was allocated (scans
//! return only committed rows, and ids are allocated in increasing order). So a scan that starts
//! from the highest id seen `horizon` ago finds every late row whose transaction took less than
//! `horizon` from its insert to its commit; the periodic sweep from the oldest row finds the
//! rest. Starting there instead of at the oldest pending row spares a caught-up relay from
//! re-reading, at every poll, the rows waiting behind parked aggregates (or leased to other
//! relays): they are read only by sweeps and rewinds.

use std::time::Duration;

use tokio::time::Instant;

/// The highest id scans had returned at least `horizon` (and at most twice that) ago.
pub(super) struct LowWater {
    horizon: Duration,
    /// The highest id any scan returned.
    seen: i64,
    /// `seen` as it was at a checkpoint, and when that was.
    checkpoint: (Instant, i64),
    /// `seen` at the checkpoint before, taken at least `horizon` before `checkpoint`.
    mark: i64,
}

impl LowWater {
    pub(super) fn new(horizon: Duration, now: Instant) -> Self {
        Self { horizon, seen: 0, checkpoint: (now, 0), mark: 0 }
    }

    /// Records that a scan returned rows up to `id`.
    pub(super) fn saw(&mut self, id: i64) {
        self.seen = self.seen.max(id);
    }

    /// An id below every row allocated since `now - horizon`: the highest id seen at the last
    /// checkpoint at least `horizon` old.
    pub(super) fn mark(&mut self, now: Instant) -> i64 {
        let (taken, seen) = self.checkpoint;
        if now >= taken + self.horizon {
            self.mark = seen;
            self.checkpoint = (now, self.seen);
        }
        self.mark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HORIZON: Duration = Duration::from_secs(2);

    /// The mark trails what scans saw by one to two horizons, never less.
    #[test]
    fn the_mark_is_what_scans_had_seen_a_horizon_ago() {
        let t0 = Instant::now();
        let mut low = LowWater::new(HORIZON, t0);
        low.saw(100);
        assert_eq!(low.mark(t0), 0);
        assert_eq!(low.mark(t0 + HORIZON / 2), 0);
        // Checkpoint at t0 + HORIZON: 100 seen by then.
        assert_eq!(low.mark(t0 + HORIZON), 0);
        low.saw(250);
        assert_eq!(low.mark(t0 + HORIZON * 3 / 2), 0, "100 was seen less than a horizon ago");
        assert_eq!(low.mark(t0 + HORIZON * 2), 100);
        assert_eq!(low.mark(t0 + HORIZON * 3), 250);
    }

    /// Long without a look (an idle relay): the mark moves to what was seen by the last look,
    /// as nothing newer is known to be a horizon old.
    #[test]
    fn a_long_pause_moves_the_mark_only_to_the_last_checkpoint() {
        let t0 = Instant::now();
        let mut low = LowWater::new(HORIZON, t0);
        low.saw(40);
        assert_eq!(low.mark(t0 + HORIZON * 10), 0);
        assert_eq!(low.mark(t0 + HORIZON * 11), 40);
    }
}
