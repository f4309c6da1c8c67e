//! The relay's publishing task: hands events to the publisher one by one, so that waiting for
//! the transport (a full client queue, a client reconnecting) never holds up the engine, which
//! must go on handling lease losses, ACKs and shutdown meanwhile.

use courier_core::{Envelope, Error, EventId, Publisher, Topic, Transport};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// An event the engine hands to the publishing task; its verdict arrives on the publisher's
/// results stream, or, if it never reaches the publisher, as an [`Unsubmitted`].
pub(super) struct Submission {
    pub(super) topic: Topic,
    pub(super) envelope: Envelope,
    /// The publish fence: past this instant the event is not handed to the transport (see
    /// [`PublishFence`](super::fencing::PublishFence)).
    pub(super) submit_by: Instant,
}

/// Why an event handed to the publishing task never reached the broker.
#[derive(Debug)]
pub(super) enum Unsubmitted {
    /// It waited past its fence: the lease might expire before its verdict.
    Fenced,
    /// The publisher refused it (payload over the broker's limit, publisher closed).
    Refused(Error),
}

/// Submits `jobs` in order until the engine drops their sender.
pub(super) async fn submit_loop<T: Transport>(
    publisher: Publisher<T>,
    mut jobs: mpsc::UnboundedReceiver<Submission>,
    unsubmitted: mpsc::UnboundedSender<(EventId, Unsubmitted)>,
) {
    while let Some(Submission { topic, envelope, submit_by }) = jobs.recv().await {
        let event_id = envelope.event_id();
        let outcome = if Instant::now() > submit_by {
            Err(Unsubmitted::Fenced)
        } else {
            publisher.submit(&topic, envelope).await.map(drop).map_err(Unsubmitted::Refused)
        };
        if let Err(why) = outcome {
            let _ = unsubmitted.send((event_id, why));
        }
    }
}
