//! The conformance suite: behaviour every [`Bus`] must show, run by each backend's tests through
//! [`conformance_tests!`]. Every test uses fresh, randomly named topics so tests run in parallel.
//!
//! In a backend's `tests/conformance.rs`:
//!
//! ```
//! struct Memory;
//!
//! impl courier_conformance::Harness for Memory {
//!     type Bus = courier_core::MemoryBus;
//!
//!     async fn bus(&self) -> Self::Bus {
//!         courier_core::MemoryBus::default()
//!     }
//! }
//!
//! courier_conformance::conformance_tests!(Memory);
//! # fn main() {}
//! ```

#![warn(missing_docs)]

pub mod local;
pub mod nats_server;
pub mod private_db;
pub mod reference_vectors;
pub mod tansu_server;
pub mod tls_certs;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use courier_core::dispatch::{self, DeadLetter, DeadLetterReason, Delivery, DispatchConfig};
use courier_core::{
    Backoff, Bus, DeadLetterTopic, Envelope, ErrorKind, EventId, HandlerError, PublisherConfig, ReadOptions,
    Reader, StartAt, Topic, TopicConfig, DEAD_LETTER_ATTEMPTS_HEADER, DEAD_LETTER_REASON_HEADER,
};
use futures::StreamExt;
use tokio::sync::oneshot;

/// Connects the suite to one backend.
pub trait Harness: Send + Sync + 'static {
    /// The backend under test.
    type Bus: Bus;

    /// A connected bus; called once per test.
    fn bus(&self) -> impl Future<Output = Self::Bus> + Send;

    /// Events used by the heavy tests; the slow-reader test uses this many publishes.
    fn scale(&self) -> usize {
        200_000
    }

    /// Whether the broker finds positions by time ([`StartAt::Time`]); librdkafka's mock
    /// cluster does not (it answers a ListOffsets by timestamp with no offset).
    fn finds_positions_by_time(&self) -> bool {
        true
    }
}

/// Generates one `#[tokio::test]` per conformance check for `$harness` (an expression).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@tests $harness;
            every_publish_yields_one_result,
            slow_results_reader_loses_nothing,
            subscriber_keeps_per_aggregate_order,
            failing_handler_is_retried_then_dead_lettered,
            handler_panic_is_a_failed_attempt,
            close_flushes_every_accepted_event,
            invalid_input_is_refused_naming_the_field,
            republished_event_is_a_duplicate,
            consumer_group_resumes_after_restart,
            reader_starts_where_asked_and_a_group_resumes,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::$name(&$harness).await;
            }
        )*
    };
}

/// A fresh, provisioned topic named after the test.
pub async fn fresh_topic<B: Bus>(bus: &B, test: &str) -> Topic {
    let topic = Topic::new(format!("conf-{test}-{}", uuid::Uuid::now_v7().simple())).expect("valid topic");
    bus.provision(&TopicConfig::new(topic.clone())).await.expect("provision topic");
    topic
}

/// `count` events spread round-robin over `aggregates` aggregates, each carrying its index within
/// its aggregate as the payload so order can be checked.
pub fn events(count: usize, aggregates: usize, payload_bytes: usize) -> Vec<Envelope> {
    let filler = "x".repeat(payload_bytes.saturating_sub(20));
    (0..count)
        .map(|i| {
            let aggregate = i % aggregates;
            let seq = i / aggregates;
            Envelope::builder("conformance", format!("agg-{aggregate}"), "Tested")
                .payload(format!("{seq}:{filler}"))
                .build()
                .expect("valid envelope")
        })
        .collect()
}

fn seq_of(envelope: &Envelope) -> usize {
    let text = std::str::from_utf8(envelope.payload()).expect("utf8 payload");
    text.split(':').next().and_then(|s| s.parse().ok()).expect("sequence prefix")
}

/// Every accepted publish yields exactly one successful result carrying its event id.
pub async fn every_publish_yields_one_result<H: Harness>(harness: &H) {
    let bus = harness.bus().await;
    let topic = fresh_topic(&bus, "acks").await;
    let publisher = bus.publisher(PublisherConfig::default().window(256));
    let count = 5_000.min(harness.scale());
    let mut acks = Vec::with_capacity(count);
    for e in events(count, 50, 64) {
        acks.push(publisher.publish(&topic, e).await.expect("accepted"));
    }
    let mut seen = HashSet::new();
    for ack in acks {
        let id = ack.event_id();
        let receipt = ack.await.expect("acknowledged");
        assert_eq!(receipt.event_id, id);
        assert!(!receipt.duplicate);
        assert!(seen.insert(id), "two results for {id}");
    }
    assert_eq!(seen.len(), count);
    publisher.close().await.expect("close");
}

/// A reader of the results stream that pauses loses nothing, and the buffer never exceeds the
/// window: publishers wait instead.
pub async fn slow_results_reader_loses_nothing<H: Harness>(harness: &H) {
    const WINDOW: usize = 1_000;
    let bus = harness.bus().await;
    let topic = fresh_topic(&bus, "slow-reader").await;
    let publisher = bus.publisher(PublisherConfig::default().window(WINDOW));
    let mut results = publisher.results().expect("results stream");
    let count = harness.scale();
    let reader = tokio::spawn(async move {
        let mut ids = HashSet::with_capacity(count);
        let mut max_buffered = 0;
        let mut failures = 0;
        while let Some(result) = results.recv().await {
            max_buffered = max_buffered.max(results.queued() + 1);
            failures += usize::from(result.outcome.is_err());
            assert!(ids.insert(result.event_id), "two results for {}", result.event_id);
            if ids.len() % (count / 4).max(1) == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        (ids, max_buffered, failures)
    });
    let mut sent = HashSet::with_capacity(count);
    for e in events(count, 1_000, 32) {
        sent.insert(publisher.submit(&topic, e).await.expect("accepted"));
    }
    publisher.close().await.expect("close");
    let (ids, max_buffered, failures) = reader.await.expect("reader");
    assert_eq!(failures, 0, "publishes failed");
    assert_eq!(ids, sent, "results missing");
    assert!(max_buffered <= WINDOW, "results buffer held {max_buffered} > window {WINDOW}");
}

/// Order state of a consumer: per aggregate, the sequences seen in handling order.
#[derive(Default)]
struct Seen {
    by_aggregate: HashMap<String, Vec<usize>>,
    total: usize,
}

/// With thousands of aggregates and concurrent handlers, each aggregate's events are handled in
/// publish order, and all events arrive.
pub async fn subscriber_keeps_per_aggregate_order<H: Harness>(harness: &H) {
    let bus = harness.bus().await;
    let topic = fresh_topic(&bus, "order").await;
    let aggregates = 2_000;
    let count = 20_000.min(harness.scale());
    publish_all(&bus, &topic, events(count, aggregates, 32)).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let in_handler = Arc::new(AtomicUsize::new(0));
    let max_parallel = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = oneshot::channel();
    let done_tx = Arc::new(Mutex::new(Some(done_tx)));
    let handler = {
        let (seen, in_handler, max_parallel) = (seen.clone(), in_handler.clone(), max_parallel.clone());
        move |e: Envelope| {
            let (seen, in_handler, max_parallel, done_tx) =
                (seen.clone(), in_handler.clone(), max_parallel.clone(), done_tx.clone());
            async move {
                let now = in_handler.fetch_add(1, Ordering::SeqCst) + 1;
                max_parallel.fetch_max(now, Ordering::SeqCst);
                if rand::random::<u8>() < 8 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tokio::task::yield_now().await;
                in_handler.fetch_sub(1, Ordering::SeqCst);
                let mut s = seen.lock().unwrap();
                s.by_aggregate.entry(e.aggregate_id().to_owned()).or_default().push(seq_of(&e));
                s.total += 1;
                if s.total == count {
                    done_tx.lock().unwrap().take().map(|tx| tx.send(()));
                }
                Ok(())
            }
        }
    };
    let stats = run_consumer(&bus, &topic, "order-group", handler, DispatchConfig::default(), done_rx).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.total, count, "events missing");
    assert_eq!(stats.handled as usize, count);
    for (aggregate, seqs) in &seen.by_aggregate {
        let expected: Vec<usize> = (0..seqs.len()).collect();
        assert_eq!(seqs, &expected, "order violated for {aggregate}");
    }
    assert!(max_parallel.load(Ordering::SeqCst) > 1, "handlers never ran concurrently");
}

/// A handler that keeps failing is retried with growing delays, then the event goes to the
/// dead-letter topic with the reason; other aggregates are unaffected.
pub async fn failing_handler_is_retried_then_dead_lettered<H: Harness>(harness: &H) {
    let bus = harness.bus().await;
    let topic = fresh_topic(&bus, "retry").await;
    let dlq = fresh_topic(&bus, "retry-dlq").await;
    let good = events(20, 4, 16);
    let poison = Envelope::builder("conformance", "poison-1", "Poison").payload("0:boom").build().unwrap();
    let poison_id = poison.event_id();
    let mut all = vec![poison];
    all.extend(good);
    publish_all(&bus, &topic, all).await;

    let attempts_at = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let handled = Arc::new(AtomicU32::new(0));
    let (done_tx, done_rx) = oneshot::channel();
    let done_tx = Arc::new(Mutex::new(Some(done_tx)));
    let handler = {
        let (attempts_at, handled) = (attempts_at.clone(), handled.clone());
        move |e: Envelope| {
            let (attempts_at, handled, done_tx) = (attempts_at.clone(), handled.clone(), done_tx.clone());
            async move {
                if e.event_id() == poison_id {
                    attempts_at.lock().unwrap().push(Instant::now());
                    return Err(HandlerError::retryable("database is on fire"));
                }
                if handled.fetch_add(1, Ordering::SeqCst) + 1 == 20 {
                    done_tx.lock().unwrap().take().map(|tx| tx.send(()));
                }
                Ok(())
            }
        }
    };
    let config = DispatchConfig::default().max_attempts(4).backoff(
        Backoff::default().initial(Duration::from_millis(20)).max(Duration::from_secs(1)).jitter(0.0),
    );
    let dead_letter = DeadLetterTopic::new(bus.publisher(PublisherConfig::default()), dlq.clone());
    let dead = Arc::new(Mutex::new(None));
    let recorder = RecordingDeadLetter { inner: dead_letter, seen: dead.clone() };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let source = bus.subscribe(&topic, "retry-group").await.expect("subscribe");
    let consumer = tokio::spawn(dispatch::dispatch(source, handler, recorder, config, async {
        let _ = stop_rx.await;
    }));
    tokio::time::timeout(Duration::from_secs(30), done_rx).await.expect("good events handled").unwrap();
    // Wait for the poison event to exhaust its attempts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.lock().unwrap().is_none() {
        assert!(Instant::now() < deadline, "poison event never dead-lettered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(());
    let stats = consumer.await.unwrap();
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(stats.retries, 3);

    let times = attempts_at.lock().unwrap().clone();
    assert_eq!(times.len(), 4, "attempts made");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, min_ms) in gaps.iter().zip([20, 40, 80]) {
        assert!(*gap >= Duration::from_millis(min_ms), "backoff too short: {gaps:?}");
    }
    assert_eq!(dead.lock().unwrap().as_ref().unwrap().attempts, 4);

    // The dead-letter topic holds the event with its reason.
    let mut dlq_stream = bus.subscribe(&dlq, "dlq-reader").await.expect("subscribe dlq");
    let dead_event = tokio::time::timeout(Duration::from_secs(10), dlq_stream.next())
        .await
        .expect("dead-lettered event arrives")
        .expect("stream open");
    let envelope = dead_event.envelope();
    assert_eq!(envelope.event_id(), poison_id);
    assert_eq!(envelope.headers()[DEAD_LETTER_REASON_HEADER], "database is on fire");
    assert_eq!(envelope.headers()[DEAD_LETTER_ATTEMPTS_HEADER], "4");
}

/// A handler panic is a failed attempt: retried with backoff, then dead-lettered with the panic
/// message, while the aggregate's later events (and other aggregates) are still handled.
pub async fn handler_panic_is_a_failed_attempt<H: Harness>(harness: &H) {
    let bus = harness.bus().await;
    let topic = fresh_topic(&bus, "panic").await;
    let dlq = fresh_topic(&bus, "panic-dlq").await;
    let event = |aggregate: &str, payload: &str| {
        Envelope::builder("conformance", aggregate, "Tested").payload(payload.to_owned()).build().unwrap()
    };
    let poison = event("crash", "0:always panics");
    let poison_id = poison.event_id();
    publish_all(
        &bus,
        &topic,
        vec![poison, event("crash", "1:fine"), event("flaky", "0:panics once"), event("crash", "2:fine")],
    )
    .await;

    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let flaky_failed = Arc::new(AtomicU32::new(0));
    let handler = {
        let (handled, flaky_failed) = (handled.clone(), flaky_failed.clone());
        move |e: Envelope| {
            let (handled, flaky_failed) = (handled.clone(), flaky_failed.clone());
            async move {
                let text = std::str::from_utf8(e.payload()).unwrap().to_owned();
                if e.event_id() == poison_id {
                    panic!("boom in {}", e.aggregate_id());
                }
                if e.aggregate_id() == "flaky" && flaky_failed.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("flaky once");
                }
                handled.lock().unwrap().push(format!("{}/{text}", e.aggregate_id()));
                Ok::<(), HandlerError>(())
            }
        }
    };
    let config = DispatchConfig::default()
        .max_attempts(3)
        .backoff(Backoff::default().initial(Duration::from_millis(10)).jitter(0.0));
    let dead_letter = DeadLetterTopic::new(bus.publisher(PublisherConfig::default()), dlq.clone());
    let dead = Arc::new(Mutex::new(None));
    let recorder = RecordingDeadLetter { inner: dead_letter, seen: dead.clone() };
    let source = bus.subscribe(&topic, "panic-group").await.expect("subscribe");
    let finished = {
        let (handled, dead) = (handled.clone(), dead.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while handled.lock().unwrap().len() < 3 || dead.lock().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "after a panic the aggregate stalled: handled {:?}, dead-lettered {}",
                    handled.lock().unwrap(),
                    dead.lock().unwrap().is_some()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let stats = dispatch::dispatch(source, handler, recorder, config, finished).await;
    let mut seen = handled.lock().unwrap().clone();
    let crash: Vec<_> = seen.iter().filter(|h| h.starts_with("crash/")).cloned().collect();
    assert_eq!(crash, ["crash/1:fine", "crash/2:fine"], "the crashed aggregate's later events, in order");
    seen.sort();
    assert_eq!(seen, ["crash/1:fine", "crash/2:fine", "flaky/0:panics once"]);
    assert_eq!((stats.handled, stats.dead_lettered, stats.retries), (3, 1, 3));
    let reason = dead.lock().unwrap().clone().expect("dead-lettered");
    assert_eq!(reason.attempts, 3);
    assert!(reason.error.message().contains("handler panicked: boom in crash"), "{}", reason.error.message());

    let mut dlq_stream = bus.subscribe(&dlq, "dlq-reader").await.expect("subscribe dlq");
    let dead_event = tokio::time::timeout(Duration::from_secs(10), dlq_stream.next())
        .await
        .expect("dead-lettered event arrives")
        .expect("stream open");
    assert_eq!(dead_event.envelope().event_id(), poison_id);
    assert!(dead_event.envelope().headers()[DEAD_LETTER_REASON_HEADER].contains("boom in crash"));
}

struct RecordingDeadLetter<L> {
    inner: L,
    seen: Arc<Mutex<Option<DeadLetterReason>>>,
}

impl<L: DeadLetter> DeadLetter for RecordingDeadLetter<L> {
    async fn dead_letter(
        &self,
        envelope: &Envelope,
        reason: &DeadLetterReason,
    ) -> Result<(), courier_core::Error> {
        self.inner.dead_letter(envelope, reason).await?;
        *self.seen.lock().unwrap() = Some(reason.clone());
        Ok(())
    }
}

/// `close` returns only when every accepted event has its verdict.
pub async fn close_flushes_every_accepted_event<H: Harness>(harness: &H) {
    let bus = harness.bus().await;
    let topic = fresh_topic(&bus, "close").await;
    let publisher = bus.publisher(PublisherConfig::default().window(4_096));
    let mut acks = Vec::new();
    for e in events(2_000, 20, 64) {
        acks.push(publisher.publish(&topic, e).await.expect("accepted"));
    }
    publisher.close().await.expect("close flushes");
    assert_eq!(publisher.pending(), 0);
    for ack in acks {
        // Every verdict is already there; the timeout only guards against a hang.
        let outcome = tokio::time::timeout(Duration::from_millis(100), ack).await;
        outcome.expect("verdict ready after close").expect("acknowledged");
    }
    let refused =
        publisher.publish(&topic, events(1, 1, 8).remove(0)).await.err().expect("refused after close");
    assert_eq!(refused.kind(), ErrorKind::Closed);
}

/// Invalid envelopes, topics and oversized payloads are refused with errors naming the field,
/// and other events are unaffected.
pub async fn invalid_input_is_refused_naming_the_field<H: Harness>(harness: &H) {
    let bus = harness.bus().await;
    let topic = fresh_topic(&bus, "invalid").await;
    let err = Envelope::builder("order", "has space", "Placed").build().unwrap_err();
    assert_eq!(err.field, "aggregate_id");
    assert_eq!(Topic::new("bad topic!").unwrap_err().field, "topic");

    let publisher = bus.publisher(PublisherConfig::default().max_payload(1_024));
    let big = Envelope::builder("order", "o-1", "Placed").payload(vec![b'x'; 2_048]).build().unwrap();
    let err = publisher.publish(&topic, big).await.err().expect("oversized payload refused");
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(!err.is_retryable());
    assert!(err.message().contains("payload"), "{err}");
    let ok = publisher.publish(&topic, events(1, 1, 8).remove(0)).await.expect("accepted").await;
    ok.expect("a valid event after a refused one is acknowledged");
    publisher.close().await.unwrap();
}

/// Re-publishing an event id is reported as a duplicate and stored once.
pub async fn republished_event_is_a_duplicate<H: Harness>(harness: &H) {
    let bus = harness.bus().await;
    let topic = fresh_topic(&bus, "dedup").await;
    let publisher = bus.publisher(PublisherConfig::default());
    let event = events(1, 1, 8).remove(0);
    let first = publisher.publish(&topic, event.clone()).await.unwrap().await.unwrap();
    let second = publisher.publish(&topic, event.clone()).await.unwrap().await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate, "re-publish not flagged duplicate");
    assert_eq!(first.position, second.position, "a duplicate points at the stored event");
    let marker = events(1, 1, 8).remove(0);
    publisher.publish(&topic, marker.clone()).await.unwrap().await.unwrap();
    publisher.close().await.unwrap();

    let mut stream = bus.subscribe(&topic, "dedup-reader").await.unwrap();
    let mut ids = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        ids.push(d.envelope().event_id());
        d.ack().await.unwrap();
        if ids.last() == Some(&marker.event_id()) {
            break;
        }
    }
    assert_eq!(ids, vec![event.event_id(), marker.event_id()], "stored once");
}

/// A consumer group that stops resumes after its last acknowledged event: nothing lost.
pub async fn consumer_group_resumes_after_restart<H: Harness>(harness: &H) {
    let bus = harness.bus().await;
    let topic = fresh_topic(&bus, "resume").await;
    let sent = events(200, 10, 16);
    let ids: Vec<EventId> = sent.iter().map(Envelope::event_id).collect();
    publish_all(&bus, &topic, sent).await;

    let mut received = HashSet::new();
    {
        let mut stream = bus.subscribe(&topic, "resume-group").await.unwrap();
        for _ in 0..100 {
            let d = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap();
            received.insert(d.envelope().event_id());
            d.ack().await.unwrap();
        }
    }
    let mut stream = bus.subscribe(&topic, "resume-group").await.unwrap();
    while received.len() < ids.len() {
        // Events handed to the first subscription but never acknowledged may come back only
        // when the broker's redelivery timer fires (JetStream `ack_wait`, 30 s by default).
        let d = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} events after restart", received.len(), ids.len()))
            .unwrap();
        received.insert(d.envelope().event_id());
        d.ack().await.unwrap();
    }
    assert_eq!(received, ids.into_iter().collect());
}

/// [`Bus::read`] starts at the start, the end or a time without moving any group, and a group
/// reader resumes after the messages it acknowledged.
pub async fn reader_starts_where_asked_and_a_group_resumes<H: Harness>(harness: &H) {
    let bus = harness.bus().await;
    let topic = fresh_topic(&bus, "read").await;
    let sent = events(4, 1, 16);
    publish_all(&bus, &topic, sent[..2].to_vec()).await;
    // Well clear of the stored times on either side, whatever the broker clock's resolution.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let between = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish_all(&bus, &topic, sent[2..3].to_vec()).await;
    let latest = bus.read(&topic, ReadOptions::new(StartAt::Latest)).await.expect("read from the end");
    publish_all(&bus, &topic, sent[3..].to_vec()).await;

    async fn ids(reader: &mut Reader, count: usize) -> Vec<EventId> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let message =
                tokio::time::timeout(Duration::from_secs(30), reader.next()).await.unwrap().unwrap();
            ids.push(message.content().expect("a Courier event").event_id());
            message.ack().await.unwrap();
        }
        ids
    }
    let id = |range: std::ops::Range<usize>| sent[range].iter().map(Envelope::event_id).collect::<Vec<_>>();
    let options = |start| ReadOptions::new(start);
    let mut earliest = bus.read(&topic, options(StartAt::Earliest)).await.unwrap();
    assert_eq!(ids(&mut earliest, 4).await, id(0..4));
    earliest.close().await;
    let mut latest = latest;
    assert_eq!(ids(&mut latest, 1).await, id(3..4));
    latest.close().await;
    if harness.finds_positions_by_time() {
        let mut by_time = bus.read(&topic, options(StartAt::Time(between))).await.unwrap();
        assert_eq!(ids(&mut by_time, 2).await, id(2..4));
        by_time.close().await;
    }

    let group = options(StartAt::Earliest).group("readers");
    let mut first = bus.read(&topic, group.clone()).await.unwrap();
    assert_eq!(ids(&mut first, 3).await, id(0..3), "ephemeral readers moved no group");
    first.close().await;
    let mut second = bus.read(&topic, group).await.unwrap();
    assert_eq!(ids(&mut second, 1).await, id(3..4));
    second.close().await;
}

async fn publish_all<B: Bus>(bus: &B, topic: &Topic, events: Vec<Envelope>) {
    let publisher = bus.publisher(PublisherConfig::default());
    let mut acks = Vec::with_capacity(events.len());
    for e in events {
        acks.push(publisher.publish(topic, e).await.expect("accepted"));
    }
    for ack in acks {
        ack.await.expect("acknowledged");
    }
    publisher.close().await.expect("close");
}

async fn run_consumer<B: Bus>(
    bus: &B,
    topic: &Topic,
    group: &str,
    handler: impl courier_core::dispatch::Handler,
    config: DispatchConfig,
    done: oneshot::Receiver<()>,
) -> courier_core::dispatch::DispatchStats {
    let dlq = fresh_topic(bus, "unused-dlq").await;
    let dead_letter = DeadLetterTopic::new(bus.publisher(PublisherConfig::default()), dlq);
    let source = bus.subscribe(topic, group).await.expect("subscribe");
    let finished = async {
        let _ = tokio::time::timeout(Duration::from_secs(120), done).await;
    };
    dispatch::dispatch(source, handler, dead_letter, config, finished).await
}
