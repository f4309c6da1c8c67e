//! Crash consistency with the `testing` kit: a relay stopped between the broker's ACK and the
//! row's mark (memory bus on every database, and NATS), and every broker fault the memory bus
//! plays, driven through a relay. Each checks what a consumer sees: every event, in order per
//! aggregate, and duplicates only where the broker delivers them.

mod common;

use std::time::Duration;

use common::{consume, enqueue_many, eventually, fast_config, nats, topic, Consumed, Kind, TestDb};
use courier_core::memory::Fault;
use courier_core::{Bus, ErrorKind, MemoryBus, MemoryConfig, Topic, TopicConfig};
use courier_outbox::testing::MarkGate;
use courier_outbox::{Relay, RelayConfig, RelayStats, Store};

const WAIT: Duration = Duration::from_secs(60);
/// Aggregates and events per aggregate of each scenario.
const AGGREGATES: usize = 10;
const PER_AGGREGATE: u64 = 5;
const TOTAL: usize = AGGREGATES * PER_AGGREGATE as usize;

per_database!(
    relay_crash_between_ack_and_mark_on_the_memory_bus,
    nacks_are_retried_then_published,
    lost_acks_are_republished_and_the_broker_says_duplicate,
    duplicate_acks_count_as_published,
    delayed_acks_hold_their_aggregate_and_one_past_the_bound_is_retried,
    stalls_time_out_and_are_retried,
    duplicate_deliveries_reach_the_consumer_twice,
);

async fn pending(store: &Store) -> u64 {
    store.stats().await.unwrap().pending
}

/// Publishes the scenario's events with a gated relay until the broker acknowledged all of
/// them, kills it with none marked, then lets a new relay finish. Returns the new relay's stats.
async fn crash_between_ack_and_mark<B: Bus + Clone>(store: &Store, bus: &B, topic: &Topic) -> RelayStats {
    enqueue_many(store, topic, AGGREGATES, PER_AGGREGATE, 1).await;
    let gate = MarkGate::held();
    let crashed = Relay::new(store.clone(), bus.clone(), fast_config()).mark_gate(&gate).start();
    eventually(WAIT, "the broker to acknowledge every event", || async {
        crashed.stats().published == TOTAL as u64
    })
    .await;
    crashed.abort();
    assert!(gate.is_held());
    assert_eq!(pending(store).await, TOTAL as u64, "acknowledged, but no row marked");

    // A new identity: it takes the partitions over once the crashed relay's leases expire.
    let restarted = Relay::new(store.clone(), bus.clone(), fast_config()).start();
    eventually(WAIT, "every row marked published", || async { pending(store).await == 0 }).await;
    let stats = restarted.stats();
    restarted.shutdown().await.unwrap();
    assert_eq!(store.stats().await.unwrap().published, TOTAL as u64);
    stats
}

fn assert_complete(consumed: &Consumed, duplicates: usize) {
    assert_eq!(consumed.distinct(), TOTAL, "every event reaches the consumer");
    assert_eq!(consumed.order_violations, 0, "in order per aggregate");
    assert_eq!(consumed.duplicates, duplicates, "deliveries of an event seen before");
}

async fn relay_crash_between_ack_and_mark_on_the_memory_bus(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let stats = crash_between_ack_and_mark(&store, &bus, &topic).await;
    // Everything was re-published, and the broker recognised every copy.
    assert_eq!((stats.published, stats.duplicates, stats.failed), (TOTAL as u64, TOTAL as u64, 0));
    assert_eq!(bus.events(&topic).len(), TOTAL, "stored once");
    assert_complete(&consume(&bus, &topic, TOTAL, WAIT).await, 0);
}

/// The same crash against the shared nats-server: JetStream de-duplicates the re-publishes by
/// `Nats-Msg-Id` and acknowledges them as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_crash_between_ack_and_mark_on_nats() {
    let (_db, store) = TestDb::create(Kind::Postgres).await;
    let (bus, topic) = (nats().await, topic());
    bus.provision(&TopicConfig::new(topic.clone())).await.expect("provision the stream");
    let stats = crash_between_ack_and_mark(&store, &bus, &topic).await;
    assert_eq!((stats.published, stats.duplicates, stats.failed), (TOTAL as u64, TOTAL as u64, 0));
    let consumed = consume(&bus, &topic, TOTAL, WAIT).await;
    let stream = courier_nats::stream_name(&topic);
    let info = bus.jetstream().get_stream(&stream).await.unwrap().info().await.unwrap().clone();
    bus.delete_topic(&topic).await.unwrap();
    assert_eq!(info.state.messages, TOTAL as u64, "stored once");
    assert_complete(&consumed, 0);
}

/// Runs a relay with `config` over the scenario's events on `bus`, whose next publishes meet
/// `faults`, until every row is published; returns its stats and what a consumer then reads.
async fn relay_with_faults(
    kind: Kind,
    bus: MemoryBus,
    config: RelayConfig,
    faults: &[(Fault, usize)],
) -> (RelayStats, Consumed, usize) {
    let (_db, store) = TestDb::create(kind).await;
    let topic = topic();
    enqueue_many(&store, &topic, AGGREGATES, PER_AGGREGATE, 1).await;
    for &(fault, count) in faults {
        bus.inject(fault, count);
    }
    let relay = Relay::new(store.clone(), bus.clone(), config).start();
    eventually(WAIT, "every row marked published", || async { pending(&store).await == 0 }).await;
    let stats = relay.stats();
    relay.shutdown().await.unwrap();
    assert_eq!(bus.faults_left(), 0, "every fault was met");
    let stored = store.stats().await.unwrap();
    assert_eq!((stored.published, stored.dead), (TOTAL as u64, 0));
    let consumed = consume(&bus, &topic, TOTAL, WAIT).await;
    (stats, consumed, bus.events(&topic).len())
}

async fn nacks_are_retried_then_published(kind: Kind) {
    let faults = [(Fault::Nack(ErrorKind::Unavailable), 3)];
    let (stats, consumed, on_bus) =
        relay_with_faults(kind, MemoryBus::default(), fast_config(), &faults).await;
    assert_eq!((stats.failed, stats.duplicates), (3, 0));
    assert_eq!(on_bus, TOTAL);
    assert_complete(&consumed, 0);
}

async fn lost_acks_are_republished_and_the_broker_says_duplicate(kind: Kind) {
    let (stats, consumed, on_bus) =
        relay_with_faults(kind, MemoryBus::default(), fast_config(), &[(Fault::LostAck, 3)]).await;
    assert_eq!((stats.failed, stats.duplicates), (3, 3), "timed out, then re-published as duplicates");
    assert_eq!(on_bus, TOTAL, "stored once");
    assert_complete(&consumed, 0);
}

async fn duplicate_acks_count_as_published(kind: Kind) {
    let (stats, consumed, on_bus) =
        relay_with_faults(kind, MemoryBus::default(), fast_config(), &[(Fault::DuplicateAck, 3)]).await;
    assert_eq!((stats.failed, stats.duplicates, stats.published), (0, 3, TOTAL as u64));
    assert_eq!(on_bus, TOTAL);
    assert_complete(&consumed, 0);
}

/// A late ACK keeps its event in flight (stored, row pending) and its aggregate waiting; an ACK
/// later than the bus's verdict bound times out and the event is re-published.
async fn delayed_acks_hold_their_aggregate_and_one_past_the_bound_is_retried(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let bus = MemoryBus::new(MemoryConfig::default().verdict_timeout(Duration::from_secs(2)));
    let topic = topic();
    let config = fast_config().lease_ttl(Duration::from_secs(4));
    common::enqueue_tx(&store, &topic, &[common::event("late", 0), common::event("late", 1)], true)
        .await
        .unwrap();
    bus.inject(Fault::DelayedAck(Duration::from_secs(1)), 1);
    bus.inject(Fault::DelayedAck(Duration::from_secs(60)), 1);
    let relay = Relay::new(store.clone(), bus.clone(), config).start();
    eventually(WAIT, "the first event stored, its ACK awaited", || async {
        bus.events(&topic).len() == 1 && relay.stats().in_flight == 1 && pending(&store).await == 2
    })
    .await;
    eventually(WAIT, "every row marked published", || async { pending(&store).await == 0 }).await;
    let stats = relay.stats();
    relay.shutdown().await.unwrap();
    assert_eq!(
        (stats.failed, stats.duplicates),
        (1, 1),
        "the second ACK timed out, its retry was a duplicate"
    );
    let consumed = consume(&bus, &topic, 2, WAIT).await;
    assert_eq!((consumed.distinct(), consumed.order_violations, consumed.duplicates), (2, 0, 0));
}

async fn stalls_time_out_and_are_retried(kind: Kind) {
    let (stats, consumed, on_bus) =
        relay_with_faults(kind, MemoryBus::default(), fast_config(), &[(Fault::Stall, 2)]).await;
    assert_eq!((stats.failed, stats.duplicates), (2, 0), "timed out, nothing stored, then published");
    assert_eq!(on_bus, TOTAL);
    assert_complete(&consumed, 0);
}

/// What a consumer must cope with on Kafka or past JetStream's duplicate window: the broker
/// delivers an event twice, and the relay's books are unaffected.
async fn duplicate_deliveries_reach_the_consumer_twice(kind: Kind) {
    let (stats, consumed, on_bus) =
        relay_with_faults(kind, MemoryBus::default(), fast_config(), &[(Fault::DuplicateDelivery, 3)]).await;
    assert_eq!((stats.failed, stats.duplicates), (0, 0));
    assert_eq!(on_bus, TOTAL + 3);
    assert_complete(&consumed, 3);
}
