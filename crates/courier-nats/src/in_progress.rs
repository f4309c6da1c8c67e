//! Keeps alive every message a subscription handed out and has not yet acknowledged or dropped.
//!
//! The dispatch engine queues an aggregate's deliveries behind its head, which may retry for
//! longer than the consumer's `ack_wait`; JetStream would then redeliver the queued messages (and
//! the head, during a long backoff wait), to be handled again and out of order. So each
//! subscription registers its deliveries while they are held and a task of its own sends `+WPI`
//! (work in progress) for each of them several times per `ack_wait`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::{Client, Subject};
use tokio::time::MissedTickBehavior;

/// In-progress acks per `ack_wait`: a late or lost one still leaves two more before expiry.
const SIGNALS_PER_ACK_WAIT: u32 = 3;
/// Floor of the signal period, so a tiny `ack_wait` does not make the task spin.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// The reply subjects (one per delivery, so unique) of a subscription's held messages.
#[derive(Default)]
pub(crate) struct Held {
    replies: Mutex<BTreeSet<Subject>>,
}

impl Held {
    /// Starts keeping alive, until the returned guard is dropped, the message acknowledged on
    /// `reply`.
    pub(crate) fn hold(self: &Arc<Self>, reply: Subject) -> HeldMessage {
        self.replies.lock().expect("held lock").insert(reply.clone());
        HeldMessage { held: Arc::clone(self), reply }
    }

    fn replies(&self) -> Vec<Subject> {
        self.replies.lock().expect("held lock").iter().cloned().collect()
    }
}

/// One held message; dropping it (with its delivery, after the ACK or unacknowledged) stops its
/// in-progress acks.
pub(crate) struct HeldMessage {
    held: Arc<Held>,
    reply: Subject,
}

impl Drop for HeldMessage {
    fn drop(&mut self) {
        self.held.replies.lock().expect("held lock").remove(&self.reply);
    }
}

/// A registry of held messages whose task sends their in-progress acks on `client` every
/// [`signal_period`]; the task ends once the registry is gone (the subscription's puller and
/// every delivery hold it).
pub(crate) fn keep_alive(client: Client, ack_wait: Duration) -> Arc<Held> {
    let held = Arc::new(Held::default());
    tokio::spawn(signal(Arc::downgrade(&held), client, signal_period(ack_wait)));
    held
}

/// How often held messages are signalled in progress.
fn signal_period(ack_wait: Duration) -> Duration {
    (ack_wait / SIGNALS_PER_ACK_WAIT).max(MIN_PERIOD)
}

async fn signal(held: Weak<Held>, client: Client, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(replies) = held.upgrade().map(|held| held.replies()) else { return };
        for reply in replies {
            // The server ignores it for a message acknowledged meanwhile.
            if let Err(err) = client.publish(reply, AckKind::Progress.into()).await {
                tracing::warn!(%err, "in-progress ack failed; a held message may be redelivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_three_times_per_ack_wait_but_not_in_a_busy_loop() {
        assert_eq!(signal_period(Duration::from_secs(30)), Duration::from_secs(10));
        assert_eq!(signal_period(Duration::from_millis(3)), MIN_PERIOD);
    }

    #[test]
    fn a_message_is_held_until_its_guard_is_dropped() {
        let held = Arc::new(Held::default());
        let first = held.hold(Subject::from("$JS.ACK.S.c.1.1.1.0.0"));
        let second = held.hold(Subject::from("$JS.ACK.S.c.1.2.2.0.0"));
        assert_eq!(held.replies().len(), 2);
        drop(first);
        assert_eq!(held.replies(), [Subject::from("$JS.ACK.S.c.1.2.2.0.0")]);
        drop(second);
        assert!(held.replies().is_empty());
    }

    /// Against the NATS server on 127.0.0.1:4222.
    #[tokio::test]
    async fn held_messages_get_in_progress_acks_until_the_registry_is_gone() {
        use futures::StreamExt;
        let client = async_nats::connect("127.0.0.1:4222").await.expect("nats-server on 127.0.0.1:4222");
        let reply = Subject::from(format!("courier.test.wpi.{}", uuid::Uuid::now_v7().simple()));
        let mut acks = client.subscribe(reply.clone()).await.unwrap();
        client.flush().await.unwrap();
        let held = Arc::new(Held::default());
        let message = held.hold(reply);
        let signalling = tokio::spawn(signal(Arc::downgrade(&held), client, MIN_PERIOD));

        let ack = acks.next().await.expect("an in-progress ack");
        assert_eq!(ack.payload.as_ref(), b"+WPI");
        drop((message, held));
        tokio::time::timeout(Duration::from_secs(60), signalling)
            .await
            .expect("signalling ends once the registry is gone")
            .unwrap();
    }
}
