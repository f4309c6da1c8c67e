//! Two-stage publishing: an event is *accepted* once it holds a slot of the in-flight window and
//! the transport has taken it; the broker's *verdict* arrives later as a [`PublishResult`].
//!
//! Every accepted event owns a [`Completion`]. Completing it (or dropping it, which reports
//! [`ErrorKind::Lost`]) delivers exactly one result, either to the caller's [`Ack`] or to the
//! publisher's [`Results`] stream. An [`Ack`] frees its window slot when the verdict arrives (the
//! caller owns the Ack and its memory). A streamed result carries its slot until it is read, so
//! the results buffer never holds more than the window and a slow reader slows publishers down
//! instead of losing results.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::{Envelope, Error, ErrorKind, EventId, Topic, DEFAULT_MAX_PAYLOAD};

/// Where the broker stored an acknowledged event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Position {
    /// In-memory bus: the sequence within the topic.
    Memory {
        /// Position in the topic's log, starting at 1.
        sequence: u64,
    },
    /// NATS JetStream: stream name and stream sequence.
    Stream {
        /// The stream that stored the event.
        stream: String,
        /// The event's sequence in that stream.
        sequence: u64,
    },
    /// Kafka: partition and offset.
    Partition {
        /// The partition the event's key mapped to.
        partition: i32,
        /// The event's offset in that partition.
        offset: i64,
    },
}

/// A successful broker verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The event the verdict is for.
    pub event_id: EventId,
    /// Where the broker stored it (for a duplicate: where the first copy is).
    pub position: Position,
    /// The broker had already stored this event id and did not store it again.
    pub duplicate: bool,
}

/// The verdict for one accepted event, as read from [`Results`].
#[derive(Debug)]
pub struct PublishResult {
    /// The event the verdict is for.
    pub event_id: EventId,
    /// The topic it was published to.
    pub topic: Topic,
    /// When the event was accepted; `accepted_at.elapsed()` on receipt is the ACK latency.
    pub accepted_at: Instant,
    /// The broker's verdict: where the event is stored, or why it is not (see
    /// [`Error::is_retryable`]).
    pub outcome: Result<Receipt, Error>,
    /// The window slot, released when the result is dropped by its reader.
    _slot: OwnedSemaphorePermit,
}

/// The broker side of a publisher: hands accepted events to a broker client.
///
/// Implementations must eventually resolve every [`Completion`] they are given, from a small
/// fixed number of tasks (not one per event). A completion that is dropped unresolved reports
/// [`ErrorKind::Lost`], so a transport bug turns into a retryable error, never a missing result.
pub trait Transport: Send + Sync + 'static {
    /// Takes one accepted event. Returns once the client has queued it; awaiting here is the
    /// backpressure point below the window (e.g. a full librdkafka queue).
    fn send(
        &self,
        topic: &Topic,
        envelope: Envelope,
        completion: Completion,
    ) -> impl Future<Output = ()> + Send;

    /// Pushes queued events out now (close calls it before waiting for verdicts).
    fn flush(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The largest payload the broker accepts; larger events are refused before acceptance.
    fn max_payload(&self) -> usize {
        DEFAULT_MAX_PAYLOAD
    }

    /// The longest time from [`send`](Self::send) being called to the event's verdict: by then
    /// the transport has a verdict or reports [`ErrorKind::Timeout`], and its client no longer
    /// tries to deliver the event. Callers that must know when nothing of theirs is still on
    /// the way rely on it, like the outbox relay before its partition lease can expire.
    fn verdict_timeout(&self) -> Duration;
}

/// The obligation to report one accepted event's verdict. See [`Transport`].
#[must_use = "dropping a Completion reports the event as lost"]
pub struct Completion {
    event_id: EventId,
    topic: Topic,
    accepted_at: Instant,
    /// `None` once resolved.
    sink: Option<(Sink, OwnedSemaphorePermit)>,
    pending: Arc<Pending>,
}

enum Sink {
    Ack(oneshot::Sender<Result<Receipt, Error>>),
    Stream(mpsc::UnboundedSender<PublishResult>),
}

impl Completion {
    /// The accepted event, to match it with the broker's acknowledgement.
    pub fn event_id(&self) -> EventId {
        self.event_id
    }

    /// The topic the event was accepted for.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// When the event was accepted, e.g. to measure ACK latency.
    pub fn accepted_at(&self) -> Instant {
        self.accepted_at
    }

    /// Delivers the verdict to whoever waits for it.
    pub fn complete(mut self, outcome: Result<Receipt, Error>) {
        self.resolve(outcome);
    }

    fn resolve(&mut self, outcome: Result<Receipt, Error>) {
        let Some((sink, slot)) = self.sink.take() else { return };
        match sink {
            // A dropped Ack means nobody wants the verdict.
            Sink::Ack(tx) => {
                drop(slot);
                let _ = tx.send(outcome);
            }
            Sink::Stream(tx) => {
                let result = PublishResult {
                    event_id: self.event_id,
                    topic: self.topic.clone(),
                    accepted_at: self.accepted_at,
                    outcome,
                    _slot: slot,
                };
                if let Err(unread) = tx.send(result) {
                    tracing::warn!(event_id = %unread.0.event_id, "publish result discarded: the Results stream was dropped");
                }
            }
        }
        self.pending.done();
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if self.sink.is_some() {
            let err = Error::new(
                ErrorKind::Lost,
                format!("the transport dropped event {} without a broker verdict", self.event_id),
            );
            self.resolve(Err(err));
        }
    }
}

/// Counts accepted events without a verdict, so close can wait for zero.
#[derive(Default)]
struct Pending {
    count: AtomicUsize,
    zero: Notify,
}

impl Pending {
    fn add(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.zero.notify_waiters();
        }
    }

    fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// An event counted in [`Pending`] before it has a [`Completion`]; uncounted if it is refused
/// (or its publish is dropped) before acceptance.
struct Counted<'a>(&'a Pending);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// Publisher settings: build with [`PublisherConfig::default`] and the setters below.
///
/// ```
/// use std::time::Duration;
/// use courier_core::PublisherConfig;
///
/// let config = PublisherConfig::default().window(4_096).close_timeout(Duration::from_secs(5));
/// assert_eq!(config.get_window(), 4_096);
/// ```
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    window: usize,
    max_payload: usize,
    close_timeout: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self { window: 1024, max_payload: DEFAULT_MAX_PAYLOAD, close_timeout: Duration::from_secs(30) }
    }
}

impl PublisherConfig {
    /// Most events accepted whose verdict has not been consumed yet (awaited as an [`Ack`] or
    /// read from [`Results`]); a publish waits while the window is full. A larger window keeps
    /// more events in flight for throughput at the cost of memory. Values below 1 count as 1.
    /// Default 1024.
    pub fn window(mut self, window: usize) -> Self {
        self.window = window;
        self
    }

    /// Largest payload accepted, in bytes; larger events are refused before acceptance. The
    /// transport's own limit applies when it is lower. Default 1 MiB.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// How long [`Publisher::close`] waits for the verdicts of events already accepted before
    /// it fails with [`ErrorKind::Timeout`]. Default 30 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// The in-flight window; see [`window`](Self::window). Backends size their clients' own
    /// in-flight limits by it.
    pub fn get_window(&self) -> usize {
        self.window
    }

    /// The payload limit; see [`max_payload`](Self::max_payload).
    pub fn get_max_payload(&self) -> usize {
        self.max_payload
    }

    /// The close timeout; see [`close_timeout`](Self::close_timeout).
    pub fn get_close_timeout(&self) -> Duration {
        self.close_timeout
    }
}

/// Publishes events through a [`Transport`] with a bounded in-flight window. Cheap to clone.
pub struct Publisher<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

struct Inner<T> {
    transport: T,
    window: Arc<Semaphore>,
    pending: Arc<Pending>,
    closed: AtomicBool,
    /// Taken on close so the results stream ends once the last verdict is read.
    results_tx: Mutex<Option<mpsc::UnboundedSender<PublishResult>>>,
    results_rx: Mutex<Option<mpsc::UnboundedReceiver<PublishResult>>>,
    /// Set once `results()` handed out the stream, so `submit` checks it without a lock.
    results_taken: AtomicBool,
    max_payload: usize,
    close_timeout: Duration,
}

impl<T: Transport> Publisher<T> {
    /// A publisher over `transport`; usually made by [`Bus::publisher`](crate::Bus::publisher).
    pub fn new(transport: T, config: PublisherConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let max_payload = config.max_payload.min(transport.max_payload());
        Self {
            inner: Arc::new(Inner {
                transport,
                window: Arc::new(Semaphore::new(config.window.max(1))),
                pending: Arc::default(),
                closed: AtomicBool::new(false),
                results_tx: Mutex::new(Some(tx)),
                results_rx: Mutex::new(Some(rx)),
                results_taken: AtomicBool::new(false),
                max_payload,
                close_timeout: config.close_timeout,
            }),
        }
    }

    /// The transport, for backend-specific inspection (e.g. its payload limit).
    pub fn transport(&self) -> &T {
        &self.inner.transport
    }

    /// Accepts `envelope` for `topic` and returns an [`Ack`] that resolves with the broker's
    /// verdict. Waits while the window is full.
    pub async fn publish(&self, topic: &Topic, envelope: Envelope) -> Result<Ack, Error> {
        let (tx, rx) = oneshot::channel();
        let event_id = envelope.event_id();
        self.accept(topic, envelope, Sink::Ack(tx)).await?;
        Ok(Ack { event_id, rx })
    }

    /// Accepts `envelope` for `topic`; its verdict goes to the [`Results`] stream, which must
    /// be taken with [`results`](Self::results) first. Waits while the window is full.
    pub async fn submit(&self, topic: &Topic, envelope: Envelope) -> Result<EventId, Error> {
        let tx = self.inner.results_tx.lock().expect("results lock").clone();
        let tx = tx.filter(|tx| !tx.is_closed()).ok_or_else(closed_error)?;
        if !self.inner.results_taken.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Config,
                "submit needs a reader: take the stream with Publisher::results() first",
            ));
        }
        let event_id = envelope.event_id();
        self.accept(topic, envelope, Sink::Stream(tx)).await?;
        Ok(event_id)
    }

    /// The stream of verdicts for events accepted with [`submit`](Self::submit); `None` after
    /// the first call. It ends after [`close`](Self::close) once every verdict was read.
    pub fn results(&self) -> Option<Results> {
        let rx = self.inner.results_rx.lock().expect("results lock").take()?;
        self.inner.results_taken.store(true, Ordering::Release);
        Some(Results { rx })
    }

    async fn accept(&self, topic: &Topic, envelope: Envelope, sink: Sink) -> Result<(), Error> {
        let inner = &*self.inner;
        // Counted before `closed` is checked (both SeqCst, as in close): close either sees this
        // event pending and waits for its verdict, or this check sees it closed.
        inner.pending.add();
        let counted = Counted(&inner.pending);
        if inner.closed.load(Ordering::SeqCst) {
            return Err(closed_error());
        }
        envelope.check_payload_size(inner.max_payload)?;
        let slot = Arc::clone(&inner.window).acquire_owned().await.map_err(|_| closed_error())?;
        // From here the completion owns the count.
        std::mem::forget(counted);
        let completion = Completion {
            event_id: envelope.event_id(),
            topic: topic.clone(),
            accepted_at: Instant::now(),
            sink: Some((sink, slot)),
            pending: Arc::clone(&inner.pending),
        };
        inner.transport.send(topic, envelope, completion).await;
        Ok(())
    }

    /// The transport's bound on the time to a verdict; see [`Transport::verdict_timeout`].
    pub fn verdict_timeout(&self) -> Duration {
        self.inner.transport.verdict_timeout()
    }

    /// Events accepted whose verdict has not arrived yet.
    pub fn pending(&self) -> usize {
        self.inner.pending.get()
    }

    /// Refuses new events, then waits until every accepted event has its verdict. Fails with
    /// [`ErrorKind::Timeout`] naming the number still pending if that takes longer than the
    /// configured close timeout. Idempotent.
    pub async fn close(&self) -> Result<(), Error> {
        let inner = &*self.inner;
        inner.closed.store(true, Ordering::SeqCst);
        // Publishes still waiting for a window slot are refused, not accepted after close.
        inner.window.close();
        inner.results_tx.lock().expect("results lock").take();
        inner.transport.flush().await;
        let drained = tokio::time::timeout(inner.close_timeout, inner.pending.wait_zero()).await;
        match drained {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "close timed out after {:?} with {} events still waiting for a broker verdict",
                    inner.close_timeout,
                    inner.pending.get()
                ),
            )),
        }
    }
}

fn closed_error() -> Error {
    Error::new(ErrorKind::Closed, "the publisher is closed")
}

/// Resolves with the broker's verdict for one event.
#[must_use = "an Ack is the only way to learn the broker's verdict"]
pub struct Ack {
    event_id: EventId,
    rx: oneshot::Receiver<Result<Receipt, Error>>,
}

impl Ack {
    /// The event whose verdict this Ack awaits.
    pub fn event_id(&self) -> EventId {
        self.event_id
    }
}

impl Future for Ack {
    type Output = Result<Receipt, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|received| match received {
            Ok(outcome) => outcome,
            // Unreachable in practice: a Completion always sends before it is dropped.
            Err(_) => Err(Error::new(ErrorKind::Lost, "the verdict channel closed unexpectedly")),
        })
    }
}

/// Verdicts of all events accepted with [`Publisher::submit`], in completion order.
pub struct Results {
    rx: mpsc::UnboundedReceiver<PublishResult>,
}

impl Results {
    /// The next verdict; `None` once the publisher is closed and every verdict was read.
    pub async fn recv(&mut self) -> Option<PublishResult> {
        self.rx.recv().await
    }

    /// Verdicts received but not yet read; never more than the window.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

impl futures::Stream for Results {
    type Item = PublishResult;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds completions until told to resolve or drop them, like a broker that is slow to ACK.
    #[derive(Clone, Default)]
    struct Stalling(Arc<Mutex<Vec<Completion>>>);

    impl Transport for Stalling {
        async fn send(&self, _: &Topic, _: Envelope, completion: Completion) {
            self.0.lock().unwrap().push(completion);
        }

        fn verdict_timeout(&self) -> Duration {
            Duration::MAX
        }
    }

    fn event() -> Envelope {
        Envelope::builder("t", "a-1", "E").build().unwrap()
    }

    #[tokio::test]
    async fn close_timeout_says_how_many_were_pending() {
        let transport = Stalling::default();
        let publisher = Publisher::new(
            transport.clone(),
            PublisherConfig::default().close_timeout(Duration::from_millis(50)),
        );
        let topic = Topic::new("t").unwrap();
        let acks: Vec<Ack> =
            futures::future::try_join_all((0..3).map(|_| publisher.publish(&topic, event()))).await.unwrap();
        let err = publisher.close().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.message().contains("3 events still waiting"), "{err}");
        // Verdicts arriving after the timeout still reach their Acks.
        for c in transport.0.lock().unwrap().drain(..) {
            let id = c.event_id();
            c.complete(Ok(Receipt {
                event_id: id,
                position: Position::Memory { sequence: 1 },
                duplicate: false,
            }));
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_dropped_completion_reports_lost_not_nothing() {
        let transport = Stalling::default();
        let publisher = Publisher::new(transport.clone(), PublisherConfig::default());
        let mut results = publisher.results().unwrap();
        let id = publisher.submit(&Topic::new("t").unwrap(), event()).await.unwrap();
        transport.0.lock().unwrap().clear();
        let result = results.recv().await.unwrap();
        assert_eq!(result.event_id, id);
        let err = result.outcome.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Lost);
        assert!(err.is_retryable());
        publisher.close().await.unwrap();
        assert!(results.recv().await.is_none(), "the stream ends after close");
    }

    /// A publish that passed the closed check while waiting for a window slot is either refused or
    /// waited for by close: close never returns while an accepted event has no verdict.
    #[tokio::test]
    async fn close_never_returns_before_a_concurrently_accepted_event_has_its_verdict() {
        let transport = Stalling::default();
        let publisher = Publisher::new(transport.clone(), PublisherConfig::default().window(1));
        let topic = Topic::new("t").unwrap();
        let first = publisher.publish(&topic, event()).await.unwrap();
        let mut second = std::pin::pin!(publisher.publish(&topic, event()));
        assert!(futures::poll!(second.as_mut()).is_pending(), "waits for the window");
        let mut close = std::pin::pin!(publisher.close());
        assert!(futures::poll!(close.as_mut()).is_pending(), "the first event has no verdict yet");
        let completion = transport.0.lock().unwrap().remove(0);
        let id = completion.event_id();
        let receipt = Receipt { event_id: id, position: Position::Memory { sequence: 1 }, duplicate: false };
        completion.complete(Ok(receipt.clone()));
        first.await.unwrap();
        let closed_early = futures::poll!(close.as_mut()).is_ready();
        match second.await {
            Ok(ack) => {
                assert!(
                    !closed_early,
                    "close returned while accepted event {} had no verdict",
                    ack.event_id()
                );
                let completion = transport.0.lock().unwrap().remove(0);
                completion.complete(Ok(Receipt { event_id: ack.event_id(), ..receipt }));
                close.await.unwrap();
                ack.await.unwrap();
            }
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Closed);
                close.await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn submit_without_a_reader_is_refused() {
        let publisher = Publisher::new(Stalling::default(), PublisherConfig::default());
        let err = publisher.submit(&Topic::new("t").unwrap(), event()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[tokio::test]
    async fn the_window_bounds_accepted_events() {
        let transport = Stalling::default();
        let publisher = Publisher::new(transport.clone(), PublisherConfig::default().window(2));
        let topic = Topic::new("t").unwrap();
        let _a = publisher.publish(&topic, event()).await.unwrap();
        let _b = publisher.publish(&topic, event()).await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(50), publisher.publish(&topic, event())).await;
        assert!(third.is_err(), "a third publish must wait for a window slot");
        let first = transport.0.lock().unwrap().remove(0);
        let id = first.event_id();
        first.complete(Ok(Receipt {
            event_id: id,
            position: Position::Memory { sequence: 1 },
            duplicate: false,
        }));
        let third = tokio::time::timeout(Duration::from_secs(1), publisher.publish(&topic, event())).await;
        assert!(third.is_ok(), "a verdict frees a slot");
    }
}
