//! Exponential backoff with jitter, shared by subscriber retries and the outbox relay.

use std::time::Duration;

use rand::Rng;

/// `initial * multiplier^(attempt-1)`, capped at `max`, then spread by ±`jitter` so that many
/// failing consumers do not retry in lockstep. `Backoff::default()`, then the setters of what
/// to change (each documents its default).
///
/// ```
/// use std::time::Duration;
/// use courier_core::Backoff;
///
/// let backoff = Backoff::default().initial(Duration::from_millis(20)).max(Duration::from_secs(1)).jitter(0.0);
/// assert_eq!(backoff.delay(3), Duration::from_millis(80));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// Delay before the second attempt. Default 100 ms.
    pub fn initial(mut self, delay: Duration) -> Self {
        self.initial = delay;
        self
    }

    /// Upper bound for any delay, jitter included. Default 30 s.
    pub fn max(mut self, delay: Duration) -> Self {
        self.max = delay;
        self
    }

    /// Growth of the delay per attempt. Default 2.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Fraction of each delay randomly added or removed, 0 to 1, so that many failing
    /// consumers do not retry in lockstep. Default 0.2.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
        let base = self.initial.as_secs_f64() * exp;
        let capped = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor =
            if jitter > 0.0 { rand::thread_rng().gen_range(1.0 - jitter..=1.0 + jitter) } else { 1.0 };
        Duration::from_secs_f64((capped * factor).min(self.max.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_caps() {
        let b = Backoff::default().jitter(0.0);
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(400));
        assert_eq!(b.delay(30), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff::default();
        for _ in 0..1000 {
            let d = b.delay(2).as_secs_f64();
            assert!((0.16..=0.24).contains(&d), "{d}");
        }
    }
}
