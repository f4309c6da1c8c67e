//! The subscriber dispatch engine every backend reuses: per-aggregate order, concurrency across
//! aggregates, bounded buffering with backpressure, retries with backoff, dead-lettering, and
//! acknowledgement only after the handler succeeded (at-least-once).
//!
//! Deliveries of one aggregate are queued and handled one at a time, in arrival order, by a task
//! that lives only while that aggregate has work; unrelated aggregates never share a queue, so a
//! slow aggregate delays only itself.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::{
    Backoff, Envelope, Error, HandlerError, Position, DEAD_LETTER_ERROR_HEADER, DEAD_LETTER_POSITION_HEADER,
};

/// One message received from a broker, acknowledged once handled or dead-lettered.
pub trait Delivery: Send + Sync + 'static {
    /// The received event.
    fn envelope(&self) -> &Envelope;

    /// Tells the broker the message is done (NATS ACK, Kafka offset marked, memory cursor).
    fn ack(self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Called before each retry wait so brokers with a redelivery timer (JetStream `ack_wait`)
    /// do not redeliver a message that is still being retried.
    fn keep_alive(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Where the broker stores the message, named in the dead-letter record that replaces a copy
    /// the dead-letter destination refuses. Default `None`.
    fn position(&self) -> Option<Position> {
        None
    }
}

/// Application code that processes one event.
pub trait Handler: Send + Sync + 'static {
    /// Processes `envelope`; an error says whether a retry may help ([`HandlerError`]).
    fn handle(&self, envelope: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, envelope: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(envelope.clone())
    }
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetterReason {
    /// Handler attempts made, including the last failed one.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: HandlerError,
}

/// Where events go after their last failed attempt.
pub trait DeadLetter: Send + Sync + 'static {
    /// Stores `envelope` with `reason` somewhere durable. The delivery is acknowledged only
    /// after this succeeds. A retryable error makes the engine try again; a permanent one (e.g.
    /// `PayloadTooLarge`) makes it store a record of the event without payload and user headers
    /// instead (see [`DEAD_LETTER_POSITION_HEADER`]).
    fn dead_letter(
        &self,
        envelope: &Envelope,
        reason: &DeadLetterReason,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Settings of one [`dispatch`] run: build with [`DispatchConfig::default`] and the setters.
///
/// ```
/// use courier_core::dispatch::DispatchConfig;
///
/// let config = DispatchConfig::default().max_concurrency(8).max_attempts(3);
/// ```
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    max_concurrency: usize,
    max_buffered: usize,
    max_attempts: u32,
    backoff: Backoff,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self { max_concurrency: 64, max_buffered: 1024, max_attempts: 5, backoff: Backoff::default() }
    }
}

impl DispatchConfig {
    /// Handlers running at once, across aggregates (one aggregate never runs two at once).
    /// Raise it for handlers that mostly wait on I/O; lower it to protect what they call.
    /// Values below 1 count as 1. Default 64.
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = max;
        self
    }

    /// Deliveries received but not yet acknowledged; when reached, the engine stops pulling from
    /// the broker, which bounds memory. Keep the broker's own limit (e.g. JetStream
    /// `max_ack_pending`) above it. Values below 1 count as 1. Default 1024.
    pub fn max_buffered(mut self, max: usize) -> Self {
        self.max_buffered = max;
        self
    }

    /// Handler attempts per event before it is dead-lettered; errors that are not retryable
    /// dead-letter at once. Default 5.
    pub fn max_attempts(mut self, max: u32) -> Self {
        self.max_attempts = max;
        self
    }

    /// Delay between handler attempts. Default [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

/// What a dispatch run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchStats {
    /// Events whose handler succeeded.
    pub handled: u64,
    /// Handler attempts that failed and were tried again.
    pub retries: u64,
    /// Events sent to the dead-letter destination.
    pub dead_lettered: u64,
}

#[derive(Default)]
struct Counters {
    handled: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
}

/// Queues of aggregates that currently have a worker; an aggregate absent here is idle.
type Queues<D> = Mutex<HashMap<String, VecDeque<(D, OwnedSemaphorePermit)>>>;

struct Engine<D, H, L> {
    handler: H,
    dead_letter: L,
    config: DispatchConfig,
    concurrency: Semaphore,
    queues: Queues<D>,
    counters: Counters,
}

/// Pulls deliveries from `source` and handles them until the source ends or `shutdown`
/// resolves. On shutdown, handlers already running finish; queued deliveries are left
/// unacknowledged for the broker to redeliver.
pub async fn dispatch<D, H, L>(
    source: impl Stream<Item = D> + Send,
    handler: H,
    dead_letter: L,
    config: DispatchConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> DispatchStats
where
    D: Delivery,
    H: Handler,
    L: DeadLetter,
{
    let buffer = Arc::new(Semaphore::new(config.max_buffered.max(1)));
    let engine = Arc::new(Engine {
        concurrency: Semaphore::new(config.max_concurrency.max(1)),
        handler,
        dead_letter,
        config,
        queues: Mutex::default(),
        counters: Counters::default(),
    });
    let mut workers = JoinSet::new();
    let mut source = std::pin::pin!(source);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = Arc::clone(&buffer).acquire_owned() => slot.expect("buffer semaphore is never closed"),
        };
        let delivery = tokio::select! {
            _ = &mut shutdown => break,
            next = source.next() => match next { Some(d) => d, None => break },
        };
        while workers.try_join_next().is_some() {}
        if let Some(first) = engine.enqueue(delivery, slot) {
            workers.spawn(Arc::clone(&engine).run_aggregate(first));
        }
    }
    engine.queues.lock().expect("queues lock").values_mut().for_each(VecDeque::clear);
    while workers.join_next().await.is_some() {}
    engine.counters.snapshot()
}

impl<D: Delivery, H: Handler, L: DeadLetter> Engine<D, H, L> {
    /// Queues behind a running worker, or returns the aggregate key when a worker must start.
    fn enqueue(&self, delivery: D, slot: OwnedSemaphorePermit) -> Option<String> {
        let mut queues = self.queues.lock().expect("queues lock");
        let key = delivery.envelope().aggregate_id();
        if let Some(queue) = queues.get_mut(key) {
            queue.push_back((delivery, slot));
            return None;
        }
        let key = key.to_owned();
        queues.insert(key.clone(), VecDeque::from([(delivery, slot)]));
        Some(key)
    }

    async fn run_aggregate(self: Arc<Self>, key: String) {
        loop {
            let next = {
                let mut queues = self.queues.lock().expect("queues lock");
                let queue = queues.get_mut(&key).expect("a running aggregate has a queue");
                let next = queue.pop_front();
                if next.is_none() {
                    queues.remove(&key);
                }
                next
            };
            let Some((delivery, _slot)) = next else { return };
            self.process(delivery).await;
        }
    }

    async fn process(&self, delivery: D) {
        let _running = self.concurrency.acquire().await.expect("concurrency semaphore is never closed");
        let envelope = delivery.envelope();
        let mut attempt = 1;
        let failure = loop {
            match self.attempt(envelope).await {
                Ok(()) => break None,
                Err(error) if error.is_retryable() && attempt < self.config.max_attempts => {
                    let delay = self.config.backoff.delay(attempt);
                    tracing::debug!(event_id = %envelope.event_id(), attempt, ?delay, %error, "handler failed; retrying");
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    delivery.keep_alive().await;
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => break Some(DeadLetterReason { attempts: attempt, error }),
            }
        };
        match failure {
            None => {
                self.counters.handled.fetch_add(1, Ordering::Relaxed);
            }
            Some(reason) => {
                if !self.send_to_dead_letter(&delivery, &reason).await {
                    // Nowhere to store it: left unacknowledged for the broker to redeliver.
                    return;
                }
                self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(error) = delivery.ack().await {
            // The broker will redeliver; at-least-once holds.
            tracing::warn!(%error, "acknowledgement failed; the broker will redeliver");
        }
    }

    /// One handler call. A panic is a failed attempt like an error: unwinding out of the worker
    /// would leave the aggregate's queue without a worker, stalling it for good.
    async fn attempt(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        // Inside the async block, so a handler that panics before returning its future is caught too.
        let call = async { self.handler.handle(envelope).await };
        AssertUnwindSafe(call).catch_unwind().await.unwrap_or_else(|panic| {
            let message = panic_message(panic.as_ref());
            tracing::error!(event_id = %envelope.event_id(), panic = message, "handler panicked");
            Err(HandlerError::retryable(format!("handler panicked: {message}")))
        })
    }

    /// Retries while the dead-letter destination fails retryably: acknowledging without it would
    /// lose the event. A permanent refusal of the copy (too large, say) is never retried: a
    /// record without payload and user headers, naming the event and its broker position, goes
    /// instead. Returns whether something was stored; `false` when even that record is refused.
    async fn send_to_dead_letter(&self, delivery: &D, reason: &DeadLetterReason) -> bool {
        let original = delivery.envelope();
        let mut record = None;
        let mut failures = 0;
        loop {
            let envelope = record.as_ref().unwrap_or(original);
            let error = match self.dead_letter.dead_letter(envelope, reason).await {
                Ok(()) => break,
                Err(error) => error,
            };
            if !error.is_retryable() {
                if record.is_some() {
                    tracing::error!(event_id = %original.event_id(), %error, "the dead-letter destination refuses even a record of the event; it stays unacknowledged");
                    return false;
                }
                tracing::error!(event_id = %original.event_id(), %error, "the dead-letter destination refuses the event; storing a record of it without payload");
                match dead_letter_record(original, delivery.position(), &error) {
                    Ok(made) => record = Some(made),
                    Err(error) => {
                        tracing::error!(event_id = %original.event_id(), %error, "no dead-letter record can be made; the event stays unacknowledged");
                        return false;
                    }
                }
                continue;
            }
            failures += 1;
            let delay = self.config.backoff.delay(failures).max(Duration::from_millis(10));
            tracing::error!(event_id = %original.event_id(), %error, ?delay, "dead-letter publish failed; retrying");
            delivery.keep_alive().await;
            tokio::time::sleep(delay).await;
        }
        tracing::warn!(event_id = %original.event_id(), attempts = reason.attempts, error = %reason.error, record = record.is_some(), "event dead-lettered");
        true
    }
}

/// The stand-in for a dead-letter copy the destination refused: the event's identity and
/// metadata, where the broker holds it, and why the copy failed; no payload, no user headers.
fn dead_letter_record(
    envelope: &Envelope,
    position: Option<Position>,
    refused: &Error,
) -> Result<Envelope, crate::ValidationError> {
    let position = match position {
        Some(Position::Memory { sequence }) => format!("sequence {sequence}"),
        Some(Position::Stream { stream, sequence }) => format!("stream {stream} sequence {sequence}"),
        Some(Position::Partition { partition, offset }) => format!("partition {partition} offset {offset}"),
        None => "unknown".to_owned(),
    };
    Envelope::builder(envelope.aggregate_type(), envelope.aggregate_id(), envelope.event_type())
        .event_id(envelope.event_id())
        .event_version(envelope.event_version())
        .timestamp(envelope.timestamp())
        .header(DEAD_LETTER_POSITION_HEADER, position)
        .header(DEAD_LETTER_ERROR_HEADER, crate::bus::bounded_header_value(&refused.to_string()))
        .rebuild()
}

/// The text a panic was raised with (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string panic payload")
}

impl Counters {
    fn snapshot(&self) -> DispatchStats {
        DispatchStats {
            handled: self.handled.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
        }
    }
}
