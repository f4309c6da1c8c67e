//! Enqueue, admin and relay scenarios on PostgreSQL, MariaDB and SQLite with the memory bus.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{consume, enqueue_many, enqueue_tx, event, eventually, fast_config, topic, Kind, TestDb};
use courier_core::memory::Fault;
use courier_core::wire::{self, WireMode};
use courier_core::{Envelope, ErrorKind, MemoryBus, MemoryConfig, Topic, TraceContext};
use courier_outbox::{
    AckedEvent, Enqueue, EventFilter, Outbox, OutboxError, Relay, RelayHandle, RelayObserver, Store,
};

const WAIT: Duration = Duration::from_secs(60);

per_database!(
    rollback_publishes_nothing_commit_publishes,
    batch_round_trips_every_field_in_order,
    duplicate_idempotency_key_is_refused,
    invalid_events_are_refused_before_writing,
    events_over_the_encoded_size_limit_are_refused_before_writing,
    failed_acks_are_retried_then_dead_then_requeued,
    poison_event_parks_only_its_aggregate,
    retries_keep_per_aggregate_order,
    two_relays_share_the_work_in_order,
    four_relays_share_the_work_in_order,
    killed_relay_is_taken_over_without_loss,
    restart_after_abort_finishes_the_work,
    shutdown_drains_and_releases_leases,
    stats_and_retention_purge,
    zero_retention_deletes_acked_rows_only,
    aggregates_differing_in_case_are_distinct,
    dead_filters_match_identifiers_exactly,
    relays_whose_ids_differ_in_case_share_the_work,
);

async fn pending(store: &Store) -> u64 {
    store.stats().await.unwrap().pending
}

async fn rollback_publishes_nothing_commit_publishes(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let rolled_back = event("order-1", 0);
    let committed = event("order-1", 1);
    enqueue_tx(&store, &topic, std::slice::from_ref(&rolled_back), false).await.unwrap();
    enqueue_tx(&store, &topic, std::slice::from_ref(&committed), true).await.unwrap();
    let relay = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    eventually(WAIT, "the committed event to be published", || async {
        store.stats().await.unwrap().published == 1
    })
    .await;
    // Let the relay poll and sweep a few more times: the rolled-back event must never appear.
    tokio::time::sleep(Duration::from_millis(700)).await;
    relay.shutdown().await.unwrap();
    let ids: Vec<_> = bus.events(&topic).iter().map(|e| e.event_id()).collect();
    assert_eq!(ids, vec![committed.event_id()]);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.published, stats.dead), (0, 1, 0));
}

/// A batch mixing events with and without the optional fields reaches the bus exactly as
/// enqueued and in batch order (PostgreSQL binds each column as one array with NULLs in it).
async fn batch_round_trips_every_field_in_order(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
    let full = |seq: u64| {
        Envelope::builder("order", "order-1", "OrderChanged")
            .payload(vec![seq as u8, 0, 255])
            .event_version(3)
            .timestamp(at)
            .trace(
                TraceContext::new(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    Some("k=v".into()),
                )
                .unwrap(),
            )
            .correlation_id(format!("corr-{seq}"))
            .tenant("tenant-a")
            .header("x-seq", seq.to_string())
            .build()
            .unwrap()
    };
    let bare = |seq: u64| {
        Envelope::builder("order", "order-1", "OrderChanged")
            .timestamp(at)
            .payload(seq.to_string())
            .build()
            .unwrap()
    };
    let events = vec![full(0), bare(1), full(2), bare(3), bare(4), full(5)];
    enqueue_tx(&store, &topic, &events, true).await.unwrap();
    let relay = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    eventually(WAIT, "the batch to be published", || async { pending(&store).await == 0 }).await;
    relay.shutdown().await.unwrap();
    let published: Vec<Envelope> = bus.events(&topic).iter().map(|e| (**e).clone()).collect();
    assert_eq!(published, events);
}

async fn duplicate_idempotency_key_is_refused(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let outbox = Outbox::default();
    let (first, second) = (event("order-7", 0), event("order-7", 1));
    with_tx!(&store, true, |tx| outbox
        .enqueue(&mut tx, Enqueue::new(&first).idempotency_key("order-7:placed"))
        .await
        .unwrap());
    let err = with_tx!(&store, false, |tx| outbox
        .enqueue(&mut tx, Enqueue::new(&second).idempotency_key("order-7:placed"))
        .await
        .unwrap_err());
    assert!(matches!(&err, OutboxError::DuplicateKey { key } if key == "order-7:placed"), "{err:?}");
    assert!(err.to_string().contains("order-7:placed"), "{err}");
    // The same key twice in one batch is refused before anything is written.
    let (a, b) = (event("order-8", 0), event("order-8", 1));
    let err = with_tx!(&store, true, |tx| outbox
        .enqueue_batch(
            &mut tx,
            [Enqueue::new(&a).idempotency_key("k"), Enqueue::new(&b).idempotency_key("k")]
        )
        .await
        .unwrap_err());
    assert!(matches!(&err, OutboxError::DuplicateKey { key } if key == "k"), "{err:?}");
    // A batch hitting an existing key names it too (PostgreSQL and MySQL report the value).
    let (c, d) = (event("order-9", 0), event("order-9", 1));
    let err = with_tx!(&store, false, |tx| outbox
        .enqueue_batch(
            &mut tx,
            [Enqueue::new(&c).idempotency_key("fresh"), Enqueue::new(&d).idempotency_key("order-7:placed")]
        )
        .await
        .unwrap_err());
    assert!(err.to_string().contains("order-7:placed"), "{err}");
    assert_eq!(pending(&store).await, 1);
}

async fn invalid_events_are_refused_before_writing(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let big = Envelope::builder("order", "o-1", "Placed").payload(vec![0u8; 2048]).build().unwrap();
    let outbox = Outbox::default().max_encoded_size(1024);
    let err = with_tx!(&store, true, |tx| outbox.enqueue(&mut tx, &big).await.unwrap_err());
    assert!(matches!(&err, OutboxError::Invalid(v) if v.field == "payload"), "{err:?}");
    // The default topic is the aggregate type, validated for every backend.
    let bad_topic = Envelope::builder("order items", "o-1", "Placed").build().unwrap();
    let err = with_tx!(&store, true, |tx| Outbox::default().enqueue(&mut tx, &bad_topic).await.unwrap_err());
    assert!(matches!(&err, OutboxError::Invalid(v) if v.field == "topic"), "{err:?}");
    assert_eq!(store.stats().await.unwrap(), Default::default());
}

/// With the default limit, an event whose payload plus headers is one byte over it is refused
/// naming both sizes, alone or in a batch with a good event, and nothing is written; one exactly
/// at the limit is accepted. The limit is measured in the outbox's wire mode.
async fn events_over_the_encoded_size_limit_are_refused_before_writing(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let outbox = Outbox::default();
    let limit = outbox.get_max_encoded_size();
    let sized = |aggregate: &str, payload_len: usize| {
        Envelope::builder("order", aggregate, "OrderChanged")
            .payload(vec![b'x'; payload_len])
            .header("x-tenant-region", "eu-west-1")
            .build()
            .unwrap()
    };
    // CloudEvents headers do not depend on the payload: measure them on an empty one.
    let header_bytes = wire::encoded_size(&sized("order-1", 0), WireMode::CloudEvents);
    let at_limit = sized("order-1", limit - header_bytes);
    let over = sized("order-2", limit - header_bytes + 1);
    assert_eq!(wire::encoded_size(&at_limit, WireMode::CloudEvents), limit);
    let over_size = limit + 1;
    let assert_refused = |err: OutboxError| {
        let OutboxError::Invalid(invalid) = &err else { panic!("{err:?}") };
        assert_eq!(invalid.field, "payload", "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("{over_size} bytes")), "names the event's size: {text}");
        assert!(text.contains(&format!("{limit} bytes")), "names the limit: {text}");
    };

    let err = with_tx!(&store, true, |tx| outbox.enqueue(&mut tx, &over).await.unwrap_err());
    assert_refused(err);
    let good = event("order-3", 0);
    let err = with_tx!(&store, true, |tx| outbox.enqueue_batch(&mut tx, [&good, &over]).await.unwrap_err());
    assert_refused(err);
    assert_eq!(store.stats().await.unwrap(), Default::default(), "nothing written");

    // In JSON-envelope mode the same event is larger (base64 payload): refused there.
    let json = outbox.clone().wire_mode(WireMode::JsonEnvelope);
    let err = with_tx!(&store, true, |tx| json.enqueue(&mut tx, &at_limit).await.unwrap_err());
    assert!(matches!(&err, OutboxError::Invalid(v) if v.field == "payload"), "{err:?}");
    assert_eq!(store.stats().await.unwrap(), Default::default(), "nothing written");

    with_tx!(&store, true, |tx| outbox.enqueue(&mut tx, &at_limit).await.unwrap());
    assert_eq!(pending(&store).await, 1);
}

async fn failed_acks_are_retried_then_dead_then_requeued(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let config = fast_config().max_attempts(3);
    // Two failed ACKs, then success: published on the third attempt.
    bus.inject(Fault::Nack(ErrorKind::Unavailable), 2);
    let retried = event("order-1", 0);
    enqueue_tx(&store, &topic, std::slice::from_ref(&retried), true).await.unwrap();
    let relay = Relay::new(store.clone(), bus.clone(), config.clone()).start();
    eventually(WAIT, "the retried event to be published", || async {
        store.stats().await.unwrap().published == 1
    })
    .await;
    assert_eq!(relay.stats().failed, 2);
    assert_eq!(bus.events(&topic).len(), 1);

    // Three failed ACKs with max_attempts = 3: dead, never marked published, never on the bus.
    bus.inject(Fault::Nack(ErrorKind::Timeout), 3);
    let doomed = event("order-2", 0);
    enqueue_tx(&store, &topic, std::slice::from_ref(&doomed), true).await.unwrap();
    eventually(WAIT, "the event to go dead", || async { store.stats().await.unwrap().dead == 1 }).await;
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.published, stats.dead), (0, 1, 1));
    assert_eq!(relay.stats().dead, 1);
    assert_eq!(bus.events(&topic).len(), 1);
    let dead = store.list_dead(&EventFilter::all(), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, doomed.event_id().to_string());
    assert_eq!(dead[0].attempts, 3);
    assert!(dead[0].last_error.as_deref().unwrap_or_default().contains("injected"), "{dead:?}");
    let went_dead = dead[0].last_attempt_at.expect("when it went dead");
    assert!(went_dead >= dead[0].created_at && went_dead <= chrono::Utc::now(), "{dead:?}");

    // Requeue brings it back and it is published.
    assert_eq!(store.requeue(&EventFilter::ids([dead[0].id])).await.unwrap(), 1);
    eventually(WAIT, "the requeued event to be published", || async {
        store.stats().await.unwrap().published == 2
    })
    .await;
    relay.shutdown().await.unwrap();
    let ids: Vec<_> = bus.events(&topic).iter().map(|e| e.event_id()).collect();
    assert_eq!(ids, vec![retried.event_id(), doomed.event_id()]);
}

async fn poison_event_parks_only_its_aggregate(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let bus = MemoryBus::new(MemoryConfig::default().max_payload(1024));
    let topic = topic();
    let poison =
        Envelope::builder("order", "poisoned", "OrderChanged").payload(vec![b'x'; 4096]).build().unwrap();
    let mut events = vec![event("poisoned", 0), poison.clone(), event("poisoned", 2)];
    for seq in 0..5 {
        for a in 0..20 {
            events.push(event(&format!("healthy-{a}"), seq));
        }
    }
    enqueue_tx(&store, &topic, &events, true).await.unwrap();
    let relay = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    let consumed = consume(&bus, &topic, 101, WAIT).await;
    assert_eq!(consumed.distinct(), 101, "every healthy event and the poisoned aggregate's first");
    assert_eq!(consumed.order_violations, 0);
    eventually(WAIT, "the poison event to go dead", || async { store.stats().await.unwrap().dead == 1 })
        .await;
    // The event after the poison waits: its aggregate is parked.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.published, stats.dead), (1, 101, 1));
    let dead = store.list_dead(&EventFilter::all().aggregate_id("poisoned"), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1, "a payload over the broker limit is not retried");
    assert!(dead[0].last_error.as_deref().unwrap_or_default().contains("payload"), "{dead:?}");
    // Discarding the poison lets the aggregate continue.
    assert_eq!(store.discard_dead(&EventFilter::ids([dead[0].id])).await.unwrap(), 1);
    eventually(WAIT, "the parked event to be published", || async { pending(&store).await == 0 }).await;
    relay.shutdown().await.unwrap();
    let last = bus.events(&topic).last().cloned().unwrap();
    assert_eq!((last.aggregate_id(), last.payload().as_ref()), ("poisoned", b"2".as_ref()));
}

async fn retries_keep_per_aggregate_order(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let total = 50 * 40;
    enqueue_many(&store, &topic, 50, 40, 2).await;
    // The faults are injected by time: on a loaded machine the relay publishes few events while
    // they last, so one event may take many of them. Enough attempts that none goes dead, which
    // would park its aggregate for good (that case has its own test).
    let config = fast_config().max_attempts(1_000);
    let relay = Relay::new(store.clone(), bus.clone(), config).start();
    // Failed ACKs scattered over the run: each parks an aggregate that must resume in order.
    let chaos = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                bus.inject(Fault::Nack(ErrorKind::Unavailable), 1);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let consumed = consume(&bus, &topic, total, WAIT).await;
    chaos.await.unwrap();
    assert_eq!(consumed.distinct(), total);
    assert_eq!(consumed.order_violations, 0);
    eventually(WAIT, "every row marked published", || async { pending(&store).await == 0 }).await;
    let stats = relay.stats();
    assert!(stats.failed > 0, "faults were injected while publishing: {stats:?}");
    assert_eq!(stats.dead, 0);
    relay.shutdown().await.unwrap();
}

/// Counts ACKs the broker flagged as duplicates, across relays.
#[derive(Clone, Default)]
struct DuplicateCounter(Arc<AtomicU64>);

impl RelayObserver for DuplicateCounter {
    fn acked(&self, event: &AckedEvent<'_>) {
        if event.duplicate {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// 50,000 events on PostgreSQL; 20,000 on MariaDB and SQLite to keep the suite quick (both are
/// slower per commit on this machine); always over 500 aggregates.
fn volume(kind: Kind) -> (usize, u64) {
    match kind {
        Kind::Postgres => (500, 100),
        Kind::MySql | Kind::Sqlite => (500, 40),
    }
}

async fn concurrent_relays(kind: Kind, relays: usize) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let (aggregates, per_aggregate) = volume(kind);
    let total = aggregates * per_aggregate as usize;
    // Half the events wait before the relays start, half are written while they run.
    enqueue_many(&store, &topic, aggregates, per_aggregate / 2, 4).await;
    let duplicates = DuplicateCounter::default();
    // No takeover is meant to happen here: a lease long enough that renewals delayed by a loaded
    // machine (a busy pool, a MySQL deadlock retried) never let one expire, while the fast
    // renewal interval keeps rebalancing quick.
    // Each relay gets its own config, so its own instance id.
    let config = || fast_config().lease_ttl(Duration::from_secs(10));
    let handles: Vec<RelayHandle> = (0..relays)
        .map(|_| Relay::new(store.clone(), bus.clone(), config()).observer(duplicates.clone()).start())
        .collect();
    let writer = {
        let (store, topic) = (store.clone(), topic.clone());
        tokio::spawn(async move {
            // Sequences continue after the first half; reuse the generator with an offset.
            let half = per_aggregate / 2;
            let mut events = Vec::new();
            for seq in half..per_aggregate {
                for a in 0..aggregates {
                    events.push(event(&format!("agg-{a}"), seq));
                }
            }
            for chunk in events.chunks(100) {
                enqueue_tx(&store, &topic, chunk, true).await.unwrap();
            }
        })
    };
    let consumed = consume(&bus, &topic, total, Duration::from_secs(300)).await;
    writer.await.unwrap();
    assert_eq!(consumed.distinct(), total, "every event published");
    assert_eq!(consumed.order_violations, 0, "per-aggregate order at the consumer");
    eventually(WAIT, "every row marked published", || async { pending(&store).await == 0 }).await;
    let stats: Vec<_> = handles.iter().map(RelayHandle::stats).collect();
    for handle in handles {
        handle.shutdown().await.unwrap();
    }
    assert_eq!(duplicates.0.load(Ordering::Relaxed), 0, "no event published twice without a takeover");
    assert_eq!(stats.iter().map(|s| s.published).sum::<u64>(), total as u64, "{stats:?}");
    assert!(stats.iter().all(|s| s.published > 0), "every relay took a share: {stats:?}");
    assert_eq!(store.stats().await.unwrap().published, total as u64);
}

async fn two_relays_share_the_work_in_order(kind: Kind) {
    concurrent_relays(kind, 2).await;
}

async fn four_relays_share_the_work_in_order(kind: Kind) {
    concurrent_relays(kind, 4).await;
}

async fn killed_relay_is_taken_over_without_loss(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let total = 200 * 50;
    enqueue_many(&store, &topic, 200, 50, 4).await;
    let victim = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    eventually(WAIT, "the victim to publish", || async { victim.stats().published > 500 }).await;
    let survivor = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    eventually(WAIT, "the victim to publish more", || async { victim.stats().published > 2000 }).await;
    // Killed mid-batch: in-flight events and unmarked ACKs are abandoned with it.
    victim.abort();
    let consumed = consume(&bus, &topic, total, Duration::from_secs(120)).await;
    assert_eq!(consumed.distinct(), total, "nothing lost");
    assert_eq!(consumed.order_violations, 0);
    eventually(WAIT, "every row marked published", || async { pending(&store).await == 0 }).await;
    assert!(survivor.stats().partitions > 0);
    survivor.shutdown().await.unwrap();
}

async fn restart_after_abort_finishes_the_work(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let total = 100 * 50;
    enqueue_many(&store, &topic, 100, 50, 2).await;
    let first = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    eventually(WAIT, "the first relay to publish", || async { first.stats().published > 1000 }).await;
    first.abort();
    // The restarted relay has a new identity: it waits for the old leases to expire.
    let second = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    let consumed = consume(&bus, &topic, total, Duration::from_secs(120)).await;
    assert_eq!(consumed.distinct(), total, "nothing lost");
    assert_eq!(consumed.order_violations, 0);
    eventually(WAIT, "every row marked published", || async { pending(&store).await == 0 }).await;
    second.shutdown().await.unwrap();
}

async fn shutdown_drains_and_releases_leases(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    enqueue_many(&store, &topic, 50, 20, 1).await;
    let config = fast_config().lease_ttl(Duration::from_secs(3600));
    let relay = Relay::new(store.clone(), bus.clone(), config.clone()).start();
    eventually(WAIT, "the relay to publish", || async { relay.stats().published > 0 }).await;
    relay.shutdown().await.unwrap();
    // Every acknowledged event was marked: the published count matches the bus.
    let published = store.stats().await.unwrap().published;
    assert_eq!(published as usize, bus.events(&topic).len());
    // Leases were released: a new relay takes over at once despite the one-hour TTL.
    let next = Relay::new(store.clone(), bus.clone(), config).start();
    let consumed = consume(&bus, &topic, 1000, Duration::from_secs(60)).await;
    assert_eq!(consumed.distinct(), 1000);
    assert_eq!(consumed.order_violations, 0);
    next.shutdown().await.unwrap();
}

async fn stats_and_retention_purge(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    enqueue_many(&store, &topic, 10, 10, 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.pending, 100);
    assert!(stats.oldest_pending_age.is_some_and(|age| age >= Duration::from_millis(20)), "{stats:?}");
    let backlog = store.backlog().await.unwrap();
    assert_eq!(backlog.pending, 100);
    assert!(backlog.oldest_pending_age.is_some_and(|age| age >= Duration::from_millis(20)), "{backlog:?}");
    let relay = Relay::new(store.clone(), bus, fast_config()).start();
    eventually(WAIT, "everything published", || async { pending(&store).await == 0 }).await;
    relay.shutdown().await.unwrap();
    assert_eq!(store.backlog().await.unwrap(), Default::default());
    store.ping().await.unwrap();
    assert_eq!(store.purge_published(Duration::from_secs(3600)).await.unwrap(), 0, "kept within retention");
    assert_eq!(store.purge_published(Duration::ZERO).await.unwrap(), 100);
    assert_eq!(store.stats().await.unwrap(), Default::default());
}

async fn zero_retention_deletes_acked_rows_only(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let config = fast_config().retention(Some(Duration::ZERO)).max_attempts(1);
    bus.inject(Fault::Nack(ErrorKind::Timeout), 1);
    let doomed = event("doomed", 0);
    enqueue_tx(&store, &topic, std::slice::from_ref(&doomed), true).await.unwrap();
    let relay = Relay::new(store.clone(), bus.clone(), config).start();
    eventually(WAIT, "the failed event to go dead", || async { store.stats().await.unwrap().dead == 1 })
        .await;

    enqueue_many(&store, &topic, 10, 10, 1).await;
    eventually(WAIT, "everything acknowledged", || async { pending(&store).await == 0 }).await;
    relay.shutdown().await.unwrap();
    let consumed = consume(&bus, &topic, 100, WAIT).await;
    assert_eq!((consumed.distinct(), consumed.order_violations), (100, 0));
    // Acknowledged rows are gone, not marked published; the dead one stays for requeue.
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.published, stats.dead), (0, 0, 1));
    let dead = store.list_dead(&EventFilter::all(), 10).await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.event_id.clone()).collect::<Vec<_>>(),
        vec![doomed.event_id().to_string()]
    );
}

/// Two topics whose names differ only in case, as `Orders-…` and `orders-…`.
fn topics_differing_in_case() -> (Topic, Topic) {
    let suffix = format!("{:08x}", rand::random::<u32>());
    (Topic::new(format!("Orders-{suffix}")).unwrap(), Topic::new(format!("orders-{suffix}")).unwrap())
}

/// `Order-1` and `order-1` are two aggregates: while `Order-1` is parked behind its dead first
/// event, the events of `order-1` enqueued between and after its own keep flowing, in order.
/// (A case-insensitive previous-pending lookup made `Order-1`'s parked row the predecessor of
/// `order-1`'s next one, which then waited for it forever.)
async fn aggregates_differing_in_case_are_distinct(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let bus = MemoryBus::new(MemoryConfig::default().max_payload(1024));
    let (upper, lower) = topics_differing_in_case();
    let poison =
        Envelope::builder("order", "Order-1", "OrderChanged").payload(vec![b'x'; 4096]).build().unwrap();
    enqueue_tx(&store, &upper, std::slice::from_ref(&poison), true).await.unwrap();
    enqueue_tx(&store, &lower, &[event("order-1", 0)], true).await.unwrap();
    enqueue_tx(&store, &upper, &[event("Order-1", 1)], true).await.unwrap();
    let relay = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    eventually(WAIT, "Order-1's first event to go dead", || async { store.stats().await.unwrap().dead == 1 })
        .await;
    // Enqueued while Order-1 is parked, interleaved with its own waiting events.
    enqueue_tx(&store, &lower, &[event("order-1", 1)], true).await.unwrap();
    enqueue_tx(&store, &upper, &[event("Order-1", 2)], true).await.unwrap();
    enqueue_tx(&store, &lower, &[event("order-1", 2)], true).await.unwrap();
    let consumed = consume(&bus, &lower, 3, WAIT).await;
    assert_eq!(consumed.distinct(), 3, "order-1's events wait for Order-1's parked ones");
    assert_eq!(consumed.order_violations, 0);
    assert!(consumed.events.iter().all(|e| e.aggregate_id() == "order-1"));
    // Order-1 stays parked behind its dead event.
    eventually(WAIT, "order-1's rows to be marked", || async { pending(&store).await == 2 }).await;
    assert!(bus.events(&upper).is_empty());
    relay.shutdown().await.unwrap();
}

/// The operators' filters select by exact topic, aggregate type, aggregate and event type:
/// `Orders-…` is not `orders-…`, `Order-1` is not `order-1`.
async fn dead_filters_match_identifiers_exactly(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (upper, lower) = topics_differing_in_case();
    let upper_event = Envelope::builder("Order", "Order-1", "OrderChanged").build().unwrap();
    let lower_event = Envelope::builder("order", "order-1", "orderchanged").build().unwrap();
    enqueue_tx(&store, &upper, std::slice::from_ref(&upper_event), true).await.unwrap();
    enqueue_tx(&store, &lower, std::slice::from_ref(&lower_event), true).await.unwrap();
    // Dead without a relay: the filters are what is tested here.
    store.execute_raw("UPDATE courier_outbox SET status = 'dead', attempts = 1").await.unwrap();

    let listed = |filter: EventFilter| {
        let store = store.clone();
        async move {
            let dead = store.list_dead(&filter, 10).await.unwrap();
            dead.into_iter().map(|d| d.event_id).collect::<Vec<_>>()
        }
    };
    let (upper_id, lower_id) = (upper_event.event_id().to_string(), lower_event.event_id().to_string());
    assert_eq!(listed(EventFilter::all()).await, [upper_id.as_str(), lower_id.as_str()]);
    assert_eq!(listed(EventFilter::all().aggregate_id("Order-1")).await, [upper_id.as_str()]);
    assert_eq!(listed(EventFilter::all().aggregate_id("order-1")).await, [lower_id.as_str()]);
    assert!(listed(EventFilter::all().aggregate_id("ORDER-1")).await.is_empty());
    assert_eq!(listed(EventFilter::all().topic(upper.as_str())).await, [upper_id.as_str()]);
    assert_eq!(listed(EventFilter::all().topic(lower.as_str())).await, [lower_id.as_str()]);
    assert_eq!(listed(EventFilter::all().aggregate_type("Order")).await, [upper_id.as_str()]);
    assert_eq!(listed(EventFilter::all().event_type("orderchanged")).await, [lower_id.as_str()]);

    // Requeue and discard change only the exact matches.
    assert_eq!(
        store.requeue(&EventFilter::all().topic(lower.as_str()).aggregate_id("Order-1")).await.unwrap(),
        0
    );
    assert_eq!(store.requeue(&EventFilter::all().aggregate_id("Order-1")).await.unwrap(), 1);
    assert_eq!(listed(EventFilter::all()).await, [lower_id.as_str()]);
    assert_eq!(store.discard_dead(&EventFilter::all().topic(upper.as_str())).await.unwrap(), 0);
    assert_eq!(store.discard_dead(&EventFilter::all().topic(lower.as_str())).await.unwrap(), 1);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (1, 0));
}

/// Relay instances `Relay-A` and `relay-a` are two relays: neither renews, holds or publishes
/// from the other's partitions. (Compared case-insensitively, both held every partition and
/// published every event.)
async fn relays_whose_ids_differ_in_case_share_the_work(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let total = 50 * 20;
    enqueue_many(&store, &topic, 50, 20, 2).await;
    let duplicates = DuplicateCounter::default();
    let handles: Vec<RelayHandle> = ["Relay-A", "relay-a"]
        .into_iter()
        .map(|id| {
            let config = fast_config().instance_id(id);
            Relay::new(store.clone(), bus.clone(), config).observer(duplicates.clone()).start()
        })
        .collect();
    let consumed = consume(&bus, &topic, total, WAIT).await;
    assert_eq!(consumed.distinct(), total);
    assert_eq!(consumed.order_violations, 0);
    eventually(WAIT, "every row marked published", || async { pending(&store).await == 0 }).await;
    let stats: Vec<_> = handles.iter().map(RelayHandle::stats).collect();
    for handle in handles {
        handle.shutdown().await.unwrap();
    }
    assert_eq!(duplicates.0.load(Ordering::Relaxed), 0, "an event was published by both relays");
    assert_eq!(stats.iter().map(|s| s.published).sum::<u64>(), total as u64, "{stats:?}");
}
