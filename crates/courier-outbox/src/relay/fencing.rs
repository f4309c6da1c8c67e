//! The publish fence: when this relay may still hand an event to the broker.
//!
//! Another relay may take a partition over once its lease expired in the database. By then no
//! event of that partition may still be on its way from this relay, or the old copy could land
//! after the new owner's events (a duplicate out of order). Every transport bounds the time from
//! a publish to its verdict ([`Transport::verdict_timeout`](courier_core::Transport)), so the
//! relay hands an event over only while its leases outlast that bound plus a margin; an event
//! refused by the fence stays pending for whoever holds the lease next.

use std::time::Duration;

use tokio::time::Instant;

/// Slack for the relay's own scheduling between the fence check and the transport's `send`,
/// and between a verdict and the lease's expiry: a tenth of the lease.
const MARGIN_FRACTION: u32 = 10;

/// Tracks until when this relay's leases surely hold and whether an event may go out now.
#[derive(Debug)]
pub(super) struct PublishFence {
    /// The latest successful renewal's start plus the lease's time to live: the database
    /// computed the expiry after that start, so the lease holds at least until then.
    valid_until: Option<Instant>,
    /// The transport's bound plus the margin: how long before `valid_until` publishing stops.
    reserve: Duration,
}

impl PublishFence {
    pub(super) fn new(lease_ttl: Duration, verdict_timeout: Duration) -> Self {
        Self { valid_until: None, reserve: verdict_timeout.saturating_add(lease_ttl / MARGIN_FRACTION) }
    }

    /// The time a lease of `lease_ttl`, renewed every `renew_interval`, leaves for publishing
    /// between renewals; a transport whose verdict can take longer could never publish.
    pub(super) fn publish_time(lease_ttl: Duration, renew_interval: Duration) -> Duration {
        lease_ttl.saturating_sub(renew_interval).saturating_sub(lease_ttl / MARGIN_FRACTION)
    }

    /// A renewal that started at `started` succeeded.
    pub(super) fn renewed(&mut self, started: Instant, lease_ttl: Duration) {
        let until = started + lease_ttl;
        self.valid_until = Some(self.valid_until.map_or(until, |old| old.max(until)));
    }

    /// The last moment an event may be handed to the transport; `None` before the first
    /// renewal, when nothing may go out.
    pub(super) fn submit_by(&self) -> Option<Instant> {
        self.valid_until.and_then(|until| until.checked_sub(self.reserve))
    }

    /// Whether an event may be handed to the transport at `now`.
    pub(super) fn allows(&self, now: Instant) -> bool {
        self.submit_by().is_some_and(|by| now <= by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn nothing_goes_out_before_the_first_renewal() {
        let fence = PublishFence::new(TTL, Duration::from_secs(5));
        assert!(!fence.allows(Instant::now()));
        assert_eq!(fence.submit_by(), None);
    }

    /// An event handed over at the last allowed moment has its verdict a margin before the
    /// lease can expire.
    #[test]
    fn publishing_stops_a_verdict_and_a_margin_before_the_lease_ends() {
        let mut fence = PublishFence::new(TTL, Duration::from_secs(5));
        let start = Instant::now();
        fence.renewed(start, TTL);
        let by = fence.submit_by().unwrap();
        assert_eq!(by, start + Duration::from_secs(4));
        assert!(fence.allows(by));
        assert!(!fence.allows(by + Duration::from_millis(1)));
    }

    #[test]
    fn a_late_answer_to_an_older_renewal_does_not_shorten_the_lease() {
        let mut fence = PublishFence::new(TTL, Duration::from_secs(1));
        let start = Instant::now();
        fence.renewed(start + Duration::from_secs(2), TTL);
        fence.renewed(start, TTL);
        assert_eq!(fence.submit_by(), Some(start + Duration::from_secs(2) + Duration::from_secs(8)));
    }

    #[test]
    fn publish_time_leaves_room_for_a_renewal_interval_and_the_margin() {
        assert_eq!(PublishFence::publish_time(TTL, Duration::from_secs(2)), Duration::from_secs(7));
    }
}
