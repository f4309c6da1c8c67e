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
//!
//! A relay that just started has seen nothing a horizon ago. Its first pass over the pending
//! rows then stands in for that checkpoint: rows allocated before the pass ended and committed
//! after it passed them are the sweep's to find, like rows whose transaction outlasts the
//! horizon. Otherwise every poll of a new relay's first two horizons would walk the whole
//! parked backlog from the oldest row.

use std::time::Duration;

use tokio::time::Instant;

/// The highest id scans had returned at least `horizon` (and at most twice that) ago, or at
/// the end of the relay's first pass if higher.
pub(super) struct LowWater {
    horizon: Duration,
    /// The highest id any scan returned.
    seen: i64,
    /// `seen` as it was at a checkpoint, and when that was.
    checkpoint: (Instant, i64),
    /// `seen` at the checkpoint before, taken at least `horizon` before `checkpoint`.
    mark: i64,
    /// A scan has reached the last pending row.
    first_pass_done: bool,
}

impl LowWater {
    pub(super) fn new(horizon: Duration, now: Instant) -> Self {
        Self { horizon, seen: 0, checkpoint: (now, 0), mark: 0, first_pass_done: false }
    }

    /// Records that a scan returned rows up to `id`.
    pub(super) fn saw(&mut self, id: i64) {
        self.seen = self.seen.max(id);
    }

    pub(super) fn seen(&self) -> i64 {
        self.seen
    }

    /// A scan reached the last pending row; the first time, the mark moves up to what scans
    /// have seen.
    pub(super) fn caught_up(&mut self) {
        if !self.first_pass_done {
            self.first_pass_done = true;
            self.mark = self.mark.max(self.seen);
        }
    }

    /// An id below every row allocated since `now - horizon`: the highest id seen at the last
    /// checkpoint at least `horizon` old.
    pub(super) fn mark(&mut self, now: Instant) -> i64 {
        let (taken, seen) = self.checkpoint;
        if now >= taken + self.horizon {
            self.mark = self.mark.max(seen);
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

    /// A new relay reads from the oldest pending row only until its first pass caught up.
    #[test]
    fn the_first_pass_stands_in_for_the_first_checkpoint() {
        let t0 = Instant::now();
        let mut low = LowWater::new(HORIZON, t0);
        low.saw(10_000);
        assert_eq!(low.mark(t0), 0, "the first pass is under way");
        low.caught_up();
        assert_eq!(low.mark(t0), 10_000);
        low.saw(10_500);
        low.caught_up();
        assert_eq!(low.mark(t0 + HORIZON), 10_000, "only the first pass moves the mark");
        assert_eq!(low.mark(t0 + HORIZON * 2), 10_500, "the checkpoints take over");
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
