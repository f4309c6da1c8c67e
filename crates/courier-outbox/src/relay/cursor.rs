//! Where the relay's claims read from and when the next one is due. Pure: the engine reports
//! what scans returned, rewinds and wake-ups.
//!
//! Claims read pending rows after `after`. A rewind (to re-read rows the engine skipped) moves
//! it back and bumps the epoch: a claim started before is discarded, as it may hold rows of an
//! aggregate that must resume from an earlier row. Once caught up, a claim starts from the
//! low-water mark ([`LowWater`]).

use std::time::Duration;

use tokio::time::Instant;

use super::low_water::LowWater;
use super::RelayConfig;

pub(super) struct Cursor {
    /// Claims read rows after this id.
    pub(super) after: i64,
    low_water: LowWater,
    /// Bumped on every rewind.
    pub(super) epoch: u64,
    /// The last scan found no more pending rows.
    pub(super) caught_up: bool,
    /// A commit woke the relay (NOTIFY) since the last claim.
    pub(super) wake_pending: bool,
    last_claim: Instant,
    /// When a claim last found rows new to this relay; `idle_after` later the relay is idle.
    last_new_rows: Instant,
    busy_poll_interval: Duration,
    poll_interval: Duration,
    idle_after: Duration,
}

impl Cursor {
    pub(super) fn new(config: &RelayConfig, now: Instant) -> Self {
        Self {
            after: 0,
            low_water: LowWater::new(config.sweep_interval, now),
            epoch: 0,
            caught_up: false,
            wake_pending: false,
            last_claim: now,
            last_new_rows: now,
            busy_poll_interval: config.busy_poll_interval,
            poll_interval: config.poll_interval,
            idle_after: config.idle_after,
        }
    }

    /// Whether a claim is due: rows are left to read, a commit woke the relay, or the poll
    /// interval passed.
    pub(super) fn due(&self, now: Instant) -> bool {
        !self.caught_up || self.wake_pending || now >= self.next_poll(now)
    }

    /// When a caught-up relay looks again. It backs off in proportion to how long no new rows
    /// arrived: a short stall of the writers costs little latency, a long idle little database
    /// load.
    pub(super) fn next_poll(&self, now: Instant) -> Instant {
        let interval = (now.saturating_duration_since(self.last_new_rows) / 10)
            .max(self.busy_poll_interval)
            .min(self.poll_interval);
        self.last_claim + interval
    }

    pub(super) fn is_idle(&self, now: Instant) -> bool {
        self.caught_up && now >= self.idle_since()
    }

    /// When the relay becomes idle if no new rows arrive.
    pub(super) fn idle_since(&self) -> Instant {
        self.last_new_rows + self.idle_after
    }

    /// A claim starts now; returns the id it reads after.
    pub(super) fn start(&mut self, now: Instant) -> i64 {
        self.wake_pending = false;
        self.last_claim = now;
        let low_water = self.low_water.mark(now);
        if self.caught_up {
            // Below the mark only after a failed claim, which must re-read its rows.
            low_water.min(self.after)
        } else {
            self.after
        }
    }

    /// A scan returned `returned` ids of the `limit` asked, the last being `last`.
    pub(super) fn scanned(&mut self, returned: usize, limit: usize, last: Option<i64>) {
        self.caught_up = returned < limit;
        if let Some(last) = last {
            self.low_water.saw(last);
        }
        if self.caught_up {
            self.low_water.caught_up();
        }
    }

    /// The highest id claims have returned: where a sweep's walk can end.
    pub(super) fn seen(&self) -> i64 {
        self.low_water.seen()
    }

    /// The claim read up to `id` (it stopped at a full batch when `more`).
    pub(super) fn passed(&mut self, id: i64, more: bool) {
        self.after = id;
        if more {
            self.caught_up = false;
        }
    }

    /// The claim found rows new to this relay.
    pub(super) fn found_new_rows(&mut self, now: Instant) {
        self.last_new_rows = now;
    }

    /// A claim that read after `from` failed: its rows are read again at the next poll.
    pub(super) fn failed(&mut self, from: i64) {
        self.after = self.after.min(from);
        self.caught_up = true;
    }

    /// A claim that read after `from` was discarded (an older epoch): read its rows again now.
    pub(super) fn discarded(&mut self, from: i64) {
        self.after = self.after.min(from);
        self.caught_up = false;
    }

    /// Re-reads from `after_id`; rows already in memory are skipped by id.
    pub(super) fn rewind(&mut self, after_id: i64) {
        self.after = self.after.min(after_id);
        self.epoch += 1;
        self.caught_up = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewind_reads_again_and_discards_older_claims() {
        let now = Instant::now();
        let mut cursor = Cursor::new(&RelayConfig::default(), now);
        cursor.passed(100, false);
        let epoch = cursor.epoch;
        cursor.rewind(40);
        assert_eq!((cursor.after, cursor.caught_up), (40, false));
        assert!(cursor.epoch > epoch);
        cursor.rewind(90);
        assert_eq!(cursor.after, 40, "a rewind never moves the cursor forward");
    }

    /// A caught-up relay polls at `busy_poll_interval` right after rows arrived, backing off to
    /// `poll_interval` as the idle time grows.
    #[test]
    fn polls_back_off_with_the_idle_time() {
        let now = Instant::now();
        let config = RelayConfig::default();
        let mut cursor = Cursor::new(&config, now);
        cursor.scanned(0, 10, None);
        cursor.start(now);
        assert_eq!(cursor.next_poll(now), now + config.busy_poll_interval);
        let much_later = now + Duration::from_secs(60);
        assert_eq!(cursor.next_poll(much_later), now + config.poll_interval);
        assert!(!cursor.due(now) && cursor.due(much_later));
        cursor.wake_pending = true;
        assert!(cursor.due(now), "a wake-up makes a claim due at once");
    }
}
