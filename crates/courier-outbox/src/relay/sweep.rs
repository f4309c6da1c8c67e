//! The periodic sweep: a second reader that walks the pending rows from the oldest one up to
//! the highest id claims had seen, for rows whose transaction committed after the main cursor
//! and its low-water mark ([`super::low_water`]) had passed their id. Pure: the engine reports
//! what its scans returned.
//!
//! The walk has its own position, so it never moves the main cursor back nor discards the
//! claim in progress. While both have rows to read, claims alternate between them: new rows
//! wait for at most one sweep scan, not for a walk across the whole parked backlog.

use std::time::Duration;

use tokio::time::Instant;

pub(super) struct Sweep {
    interval: Duration,
    next_at: Instant,
    walk: Option<Walk>,
    /// The last claim read for the walk.
    took_last_turn: bool,
}

struct Walk {
    /// The walk reads rows after this id.
    after: i64,
    /// It ends once past this id: the main cursor reads the rows above it.
    until: i64,
}

impl Sweep {
    pub(super) fn new(interval: Duration, now: Instant) -> Self {
        Self { interval, next_at: now + interval, walk: None, took_last_turn: false }
    }

    /// When the next walk starts.
    pub(super) fn next_at(&self) -> Instant {
        self.next_at
    }

    /// Starts a walk up to `until`, the highest id claims have seen, if one is due and none is
    /// under way. Nothing seen yet means the main cursor has not passed any row.
    pub(super) fn begin_if_due(&mut self, now: Instant, until: i64) {
        if now < self.next_at {
            return;
        }
        self.next_at = now + self.interval;
        if self.walk.is_none() && until > 0 {
            self.walk = Some(Walk { after: 0, until });
        }
    }

    pub(super) fn walking(&self) -> bool {
        self.walk.is_some()
    }

    /// Whether the next claim reads for the walk, and after which id: always when the main
    /// cursor has nothing due, every other claim when it has.
    pub(super) fn take_turn(&mut self, main_due: bool) -> Option<i64> {
        let after = self.walk.as_ref()?.after;
        self.took_last_turn = !main_due || !self.took_last_turn;
        self.took_last_turn.then_some(after)
    }

    /// A walk's scan read up to `reached` (`None`: it returned nothing); `more` when it stopped
    /// before the end of the pending rows.
    pub(super) fn scanned(&mut self, reached: Option<i64>, more: bool) {
        let Some(walk) = self.walk.as_mut() else { return };
        if let Some(id) = reached {
            walk.after = walk.after.max(id);
        }
        if !more || walk.after >= walk.until {
            self.walk = None;
        }
    }

    /// A walk's scan or fetch failed: the walk ends, and the next one reads its rows.
    pub(super) fn failed(&mut self) {
        self.walk = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(2);

    /// A sweep made at `t0`, walking since its first interval ended, up to `until`.
    fn walking(t0: Instant, until: i64) -> Sweep {
        let mut sweep = Sweep::new(INTERVAL, t0);
        sweep.begin_if_due(t0 + INTERVAL, until);
        sweep
    }

    #[test]
    fn a_walk_starts_each_interval_and_ends_past_what_was_seen() {
        let t0 = Instant::now();
        let mut sweep = Sweep::new(INTERVAL, t0);
        sweep.begin_if_due(t0, 500);
        assert!(!sweep.walking(), "a walk before its interval");
        sweep.begin_if_due(t0 + INTERVAL, 500);
        assert_eq!(sweep.take_turn(false), Some(0));
        sweep.scanned(Some(300), true);
        assert_eq!(sweep.take_turn(false), Some(300), "the walk goes on from where it stopped");
        sweep.scanned(Some(600), true);
        assert!(!sweep.walking(), "the walk went past the highest id seen at its start");
        assert_eq!(sweep.next_at(), t0 + INTERVAL * 2);
    }

    #[test]
    fn a_walk_ends_at_the_last_pending_row_or_a_failure() {
        let t0 = Instant::now();
        let mut sweep = walking(t0, 500);
        sweep.scanned(Some(40), false);
        assert!(!sweep.walking(), "the walk read the last pending row");
        sweep.begin_if_due(t0 + INTERVAL * 2, 500);
        sweep.failed();
        assert!(!sweep.walking());
        sweep.begin_if_due(t0 + INTERVAL * 3, 0);
        assert!(!sweep.walking(), "nothing seen: the main cursor reads every row");
    }

    /// New rows are due at every claim while the relay is busy: the walk still advances, and
    /// the new rows wait for at most one of its scans.
    #[test]
    fn claims_alternate_while_the_main_cursor_has_rows_due() {
        let t0 = Instant::now();
        let mut sweep = Sweep::new(INTERVAL, t0);
        assert_eq!(sweep.take_turn(true), None, "no walk under way");
        sweep.begin_if_due(t0 + INTERVAL, 10_000);
        let turns: Vec<bool> = (0..4).map(|_| sweep.take_turn(true).is_some()).collect();
        assert_eq!(turns, [true, false, true, false]);
        assert!(sweep.take_turn(false).is_some() && sweep.take_turn(false).is_some());
    }

    /// A walk that outlasts its interval runs to its end rather than starting over.
    #[test]
    fn a_slow_walk_is_not_restarted() {
        let t0 = Instant::now();
        let mut sweep = walking(t0, 10_000);
        sweep.scanned(Some(3_000), true);
        sweep.begin_if_due(t0 + INTERVAL * 2, 20_000);
        assert_eq!(sweep.take_turn(false), Some(3_000));
    }
}
