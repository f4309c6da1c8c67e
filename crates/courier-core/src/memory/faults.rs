//! Broker misbehaviour the memory bus can play back, and the pure decision of what one publish
//! under a fault does: whether the event is stored, and which verdict arrives when.

use std::fmt;
use std::time::Duration;

use crate::ErrorKind;

/// One broker misbehaviour, injected with [`MemoryBus::inject`](super::MemoryBus::inject) for
/// the next publishes, so tests can show how a publisher, an outbox relay or a consumer copes
/// with what real brokers do on a bad day.
///
/// A fault that delays the verdict never holds up the caller of `publish`: the event is
/// accepted at once and its [`Ack`](crate::Ack) (or [`Results`](crate::Results) entry)
/// resolves later. No verdict takes longer than the bus's
/// [`verdict_timeout`](super::MemoryConfig::verdict_timeout): at that bound it is
/// [`ErrorKind::Timeout`], as a real client gives up waiting for its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The broker refuses the event: nothing is stored and the verdict, at once, is an error of
    /// this kind. A retryable kind ([`ErrorKind::is_retryable`], e.g.
    /// [`ErrorKind::Unavailable`]) plays a transient refusal, another kind (e.g.
    /// [`ErrorKind::Rejected`]) a permanent one.
    Nack(ErrorKind),
    /// The broker stores the event but its acknowledgement never arrives: the verdict is
    /// [`ErrorKind::Timeout`] at the verdict timeout. A publisher that re-publishes then gets a
    /// receipt flagged [`duplicate`](crate::Receipt::duplicate), and consumers see the event once.
    LostAck,
    /// The broker stores the event (unless it already has it) and acknowledges it as a
    /// duplicate, as when an earlier attempt whose ACK was lost had stored it. Callers must
    /// count such a receipt as success.
    DuplicateAck,
    /// The broker stores the event at once, so consumers may see it before the publisher hears
    /// back, and acknowledges it after this delay; a delay that reaches the verdict timeout
    /// ends in [`ErrorKind::Timeout`] at the bound instead (the event stays stored).
    DelayedAck(Duration),
    /// The broker does not answer: nothing is stored, and the verdict is
    /// [`ErrorKind::Timeout`] at the verdict timeout.
    Stall,
    /// The broker stores the event and then once more, past its de-duplication by event id,
    /// so every consumer group receives it twice: what Kafka does with a re-publish its
    /// idempotent producer cannot recognise, or JetStream once the duplicate window has
    /// passed. The verdict is a receipt for the first copy, at once.
    DuplicateDelivery,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nack(kind) => write!(f, "NACK ({kind})"),
            Self::LostAck => f.write_str("lost ACK"),
            Self::DuplicateAck => f.write_str("duplicate ACK"),
            Self::DelayedAck(delay) => write!(f, "ACK delayed by {delay:?}"),
            Self::Stall => f.write_str("stall"),
            Self::DuplicateDelivery => f.write_str("duplicate delivery"),
        }
    }
}

/// How many copies of the event a publish stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Copies {
    /// None: the broker refused or did not answer.
    None,
    /// One, subject to de-duplication by event id.
    One,
    /// One as usual, then another that bypasses de-duplication.
    Two,
}

/// The verdict a publish gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The receipt of the stored copy, as the log reports it.
    Receipt,
    /// That receipt, flagged duplicate.
    DuplicateReceipt,
    /// An error of this kind.
    Error(ErrorKind),
}

/// What one publish does: store `copies`, then give `verdict` `after` the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) copies: Copies,
    pub(super) verdict: Verdict,
    pub(super) after: Duration,
}

impl Plan {
    /// The plan for a publish under `fault` (`None`: a healthy broker) on a bus whose verdicts
    /// take at most `bound`.
    pub(super) fn new(fault: Option<Fault>, bound: Duration) -> Self {
        let now = |copies, verdict| Self { copies, verdict, after: Duration::ZERO };
        let timeout = |copies| Self { copies, verdict: Verdict::Error(ErrorKind::Timeout), after: bound };
        match fault {
            None => now(Copies::One, Verdict::Receipt),
            Some(Fault::Nack(kind)) => now(Copies::None, Verdict::Error(kind)),
            Some(Fault::LostAck) => timeout(Copies::One),
            Some(Fault::DuplicateAck) => now(Copies::One, Verdict::DuplicateReceipt),
            Some(Fault::DelayedAck(delay)) if delay < bound => {
                Self { copies: Copies::One, verdict: Verdict::Receipt, after: delay }
            }
            Some(Fault::DelayedAck(_)) => timeout(Copies::One),
            Some(Fault::Stall) => timeout(Copies::None),
            Some(Fault::DuplicateDelivery) => now(Copies::Two, Verdict::Receipt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_millis(500);

    fn plan(fault: Fault) -> (Copies, Verdict, Duration) {
        let plan = Plan::new(Some(fault), BOUND);
        (plan.copies, plan.verdict, plan.after)
    }

    #[test]
    fn a_healthy_broker_stores_once_and_answers_at_once() {
        let plan = Plan::new(None, BOUND);
        assert_eq!((plan.copies, plan.verdict, plan.after), (Copies::One, Verdict::Receipt, Duration::ZERO));
    }

    #[test]
    fn a_nack_stores_nothing_and_answers_at_once() {
        let kind = ErrorKind::Unavailable;
        assert_eq!(plan(Fault::Nack(kind)), (Copies::None, Verdict::Error(kind), Duration::ZERO));
    }

    #[test]
    fn a_lost_ack_stores_and_times_out_at_the_bound() {
        assert_eq!(plan(Fault::LostAck), (Copies::One, Verdict::Error(ErrorKind::Timeout), BOUND));
    }

    #[test]
    fn a_stall_stores_nothing_and_times_out_at_the_bound() {
        assert_eq!(plan(Fault::Stall), (Copies::None, Verdict::Error(ErrorKind::Timeout), BOUND));
    }

    #[test]
    fn a_delay_within_the_bound_acknowledges_late_and_one_reaching_it_times_out() {
        let short = Duration::from_millis(100);
        assert_eq!(plan(Fault::DelayedAck(short)), (Copies::One, Verdict::Receipt, short));
        let timed_out = (Copies::One, Verdict::Error(ErrorKind::Timeout), BOUND);
        assert_eq!(plan(Fault::DelayedAck(BOUND)), timed_out);
        assert_eq!(plan(Fault::DelayedAck(BOUND * 10)), timed_out);
    }

    #[test]
    fn duplicates_answer_at_once() {
        assert_eq!(plan(Fault::DuplicateAck), (Copies::One, Verdict::DuplicateReceipt, Duration::ZERO));
        assert_eq!(plan(Fault::DuplicateDelivery), (Copies::Two, Verdict::Receipt, Duration::ZERO));
    }
}
