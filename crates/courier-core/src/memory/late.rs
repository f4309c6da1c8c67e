//! Verdicts due later than their publish (delayed and stalled ones), delivered from one task per
//! bus so that the publishing caller never waits for them and no task is spawned per event.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{Completion, Error, Receipt};

/// A verdict to deliver at `due`.
struct Late {
    due: Instant,
    /// Scheduling order, so verdicts due at the same instant arrive in publish order.
    seq: u64,
    completion: Completion,
    outcome: Result<Receipt, Error>,
}

impl PartialEq for Late {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Late {}

impl PartialOrd for Late {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Late {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The handle to a bus's late-verdict task, started with the first late verdict.
#[derive(Default)]
pub(super) struct LateVerdicts {
    /// The task's queue and the next sequence number.
    queue: Mutex<(Option<mpsc::UnboundedSender<Late>>, u64)>,
}

impl LateVerdicts {
    /// Completes `completion` with `outcome` at `due`. Must be called within a Tokio runtime.
    pub(super) fn schedule(&self, due: Instant, completion: Completion, outcome: Result<Receipt, Error>) {
        let mut queue = self.queue.lock().expect("late verdicts lock");
        let (sender, seq) = &mut *queue;
        *seq += 1;
        let mut late = Late { due, seq: *seq, completion, outcome };
        if let Some(tx) = sender {
            match tx.send(late) {
                Ok(()) => return,
                // The task ended with the runtime it ran on: start another on this one.
                Err(mpsc::error::SendError(back)) => late = back,
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(deliver(rx));
        tx.send(late).unwrap_or_else(|_| unreachable!("the receiver was just created"));
        *sender = Some(tx);
    }
}

/// Delivers each verdict when due, until the bus is gone and nothing is left to deliver.
async fn deliver(mut rx: mpsc::UnboundedReceiver<Late>) {
    let mut waiting = BinaryHeap::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        let next_due = waiting.peek().map(|Reverse(late): &Reverse<Late>| late.due);
        tokio::select! {
            received = rx.recv(), if open => match received {
                Some(late) => waiting.push(Reverse(late)),
                None => open = false,
            },
            () = sleep_until(next_due) => {
                let now = Instant::now();
                while waiting.peek().is_some_and(|Reverse(late)| late.due <= now) {
                    let Reverse(late) = waiting.pop().expect("peeked");
                    late.completion.complete(late.outcome);
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
