//! Lease fencing: a relay that loses its lease while the broker holds its publishes back must
//! have nothing of that partition on the way any more when another relay takes over, and must
//! change none of its rows afterwards.
//!
//! Each test cuts relay A off its database (a frozen TCP proxy, like a network partition) while
//! the broker holds A's events back (Kafka: the mock cluster's broker down; NATS: the server
//! process stopped), lets relay B take the partitions over once A's leases expired, then lets
//! the broker and A's database connections go. Every event must reach the consumer once, in
//! order, and every row end published.

mod common;

use std::time::Duration;

use common::{consume, enqueue_tx, event, eventually, fast_config, topic, FreezableProxy, Kind, TestDb};
use courier_conformance::nats_server::PrivateServer;
use courier_core::{Bus, MemoryBus, Topic, TopicConfig};
use courier_kafka::{KafkaBus, KafkaConfig};
use courier_nats::{NatsBus, NatsConfig};
use courier_outbox::testing::MarkGate;
use courier_outbox::{Relay, RelayConfig, RelayHandle, Store};
use sqlx::Connection as _;

const AGGREGATES: usize = 20;
/// Events per aggregate in each of the two batches.
const PER_BATCH: u64 = 5;
const WAIT: Duration = Duration::from_secs(60);

/// A lease that allows publishes of up to 3.1 s (see `RelayConfig::validate_with`); the buses
/// below give up on an event well within that.
fn config(instance: &str) -> RelayConfig {
    fast_config()
        .instance_id(instance)
        .lease_ttl(Duration::from_secs(4))
        .lease_renew_interval(Duration::from_millis(500))
}

/// Enqueues events `from..from + PER_BATCH` of every aggregate.
async fn enqueue_batch(store: &Store, topic: &Topic, from: u64) {
    let events: Vec<_> = (from..from + PER_BATCH)
        .flat_map(|seq| (0..AGGREGATES).map(move |a| event(&format!("agg-{a}"), seq)))
        .collect();
    enqueue_tx(store, topic, &events, true).await.unwrap();
}

async fn pending(store: &Store) -> u64 {
    store.stats().await.unwrap().pending
}

/// How the broker holds publishes back and lets them go.
trait Hold {
    fn hold(&self);
    fn release(&self);
}

/// Runs the takeover; returns the database (dropped at the test's end) and both relays.
async fn takeover_while_the_broker_holds_acks_back<B: Bus>(
    bus_a: B,
    bus_b: B,
    topic: &Topic,
    broker: &impl Hold,
) -> (TestDb, RelayHandle, RelayHandle) {
    let (db, store) = TestDb::create(Kind::Postgres).await;
    let proxy = FreezableProxy::start("127.0.0.1:5432").await;
    let store_a = Store::connect(&db.url.replace("127.0.0.1:5432", &proxy.addr.to_string())).await.unwrap();

    let relay_a = Relay::new(store_a, bus_a, config("relay-a")).start();
    enqueue_batch(&store, topic, 0).await;
    eventually(WAIT, "relay A to publish the first batch", || async { pending(&store).await == 0 }).await;

    // A hands the second batch to a broker that does not answer, then loses its database.
    broker.hold();
    enqueue_batch(&store, topic, PER_BATCH).await;
    eventually(WAIT, "relay A to have events in flight", || async { relay_a.stats().in_flight > 0 }).await;
    proxy.freeze();

    // B takes over once A's leases expired, and publishes the same events.
    let relay_b = Relay::new(store.clone(), bus_b, config("relay-b")).start();
    eventually(WAIT, "relay B to take every partition and publish", || async {
        relay_b.stats().partitions == 16 && relay_b.stats().in_flight > 0
    })
    .await;
    broker.release();
    eventually(WAIT, "every row published", || async { pending(&store).await == 0 }).await;
    // A's connections come back: whatever it still wanted to write is refused by the fence.
    proxy.thaw();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0), "A's late writes changed rows B owns: {stats:?}");
    (db, relay_a, relay_b)
}

async fn check_consumer<B: Bus>(bus: &B, topic: &Topic) {
    let total = AGGREGATES * 2 * PER_BATCH as usize;
    let consumed = consume(bus, topic, total, WAIT).await;
    assert_eq!(consumed.distinct(), total, "every event reached the consumer");
    assert_eq!(consumed.duplicates, 0, "no event twice");
    assert_eq!(consumed.order_violations, 0, "per-aggregate order");
}

struct MockBroker<'a>(&'a KafkaBus);

impl Hold for MockBroker<'_> {
    fn hold(&self) {
        self.0.mock_cluster().expect("a mock cluster").broker_down(1).unwrap();
    }

    fn release(&self) {
        self.0.mock_cluster().expect("a mock cluster").broker_up(1).unwrap();
    }
}

/// Without the fence, librdkafka kept A's events for `message.timeout.ms` (300 s by default)
/// and sent them when the broker came back, after B had published them: every held event twice,
/// A's copies after B's later events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_takeover_while_the_broker_is_down_publishes_each_event_once_in_order() {
    let quick = |config: KafkaConfig| {
        config.queue_full_timeout(Duration::from_millis(200)).delivery_timeout(Duration::from_secs(1))
    };
    let bus_a = KafkaBus::connect(quick(KafkaConfig::mock(1))).expect("mock cluster");
    let bus_b = KafkaBus::connect(quick(KafkaConfig::new(bus_a.bootstrap_servers()))).expect("bus B");
    let topic = topic();
    bus_a.provision(&TopicConfig::new(topic.clone()).partitions(4)).await.unwrap();

    let (_db, relay_a, relay_b) =
        takeover_while_the_broker_holds_acks_back(bus_a.clone(), bus_b.clone(), &topic, &MockBroker(&bus_a))
            .await;
    check_consumer(&bus_b, &topic).await;
    let records: i64 = (0..4)
        .map(|partition| {
            bus_b.with_producer_client(|client| {
                let (low, high) =
                    client.fetch_watermarks(topic.as_str(), partition, Duration::from_secs(10)).unwrap();
                high - low
            })
        })
        .sum();
    assert_eq!(records, (AGGREGATES * 2 * PER_BATCH as usize) as i64, "records in the topic");
    relay_a.abort();
    relay_b.shutdown().await.unwrap();
}

struct Frozen<'a>(&'a PrivateServer);

impl Hold for Frozen<'_> {
    fn hold(&self) {
        self.0.freeze();
    }

    fn release(&self) {
        self.0.thaw();
    }
}

/// A NATS client cannot call back what it wrote to a stopped server's socket: A's copies are
/// stored once the server runs again, and JetStream drops B's as duplicates (or A's, whichever
/// comes second) within the stream's duplicate window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_takeover_while_the_server_is_frozen_publishes_each_event_once_in_order() {
    let server = PrivateServer::start("");
    let connect = || NatsBus::connect(NatsConfig::new(server.url()).ack_timeout(Duration::from_secs(1)));
    let (bus_a, bus_b) = (connect().await.unwrap(), connect().await.unwrap());
    let topic = topic();
    bus_a.provision(&TopicConfig::new(topic.clone())).await.unwrap();

    let (_db, relay_a, relay_b) =
        takeover_while_the_broker_holds_acks_back(bus_a.clone(), bus_b.clone(), &topic, &Frozen(&server))
            .await;
    check_consumer(&bus_b, &topic).await;
    let stream = bus_b.jetstream().get_stream(courier_nats::stream_name(&topic)).await.unwrap();
    assert_eq!(stream.cached_info().state.messages, (AGGREGATES * 2 * PER_BATCH as usize) as u64);
    relay_a.abort();
    relay_b.shutdown().await.unwrap();
}

/// A shutdown that times out with events still on their way must not release their
/// partitions' leases, or another relay could publish the same events at once: those leases
/// expire instead, after the events had their verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_times_out_keeps_the_leases_of_events_in_flight() {
    let server = PrivateServer::start("");
    let bus =
        NatsBus::connect(NatsConfig::new(server.url()).ack_timeout(Duration::from_secs(1))).await.unwrap();
    let topic = topic();
    bus.provision(&TopicConfig::new(topic.clone())).await.unwrap();
    let (db, store) = TestDb::create(Kind::Postgres).await;
    let relay =
        Relay::new(store.clone(), bus, config("relay-a").drain_timeout(Duration::from_millis(100))).start();
    eventually(WAIT, "the relay to hold every partition", || async { relay.stats().partitions == 16 }).await;

    server.freeze();
    enqueue_tx(&store, &topic, &[event("agg-0", 0)], true).await.unwrap();
    eventually(WAIT, "the event to be in flight", || async { relay.stats().in_flight == 1 }).await;
    let stopped = relay.shutdown().await.expect_err("the shutdown reports the event it left in flight");
    assert!(stopped.to_string().contains("1 events still waiting for a broker verdict"), "{stopped}");
    server.thaw();

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let held: Vec<i64> = sqlx::query_scalar(
        "SELECT partition_no FROM courier_outbox_leases WHERE owner = 'relay-a' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let shard: i64 = sqlx::query_scalar("SELECT shard FROM courier_outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(held, vec![shard % 16], "only the partition with the event in flight stays leased");
}

/// A publish that waits for room in the client (librdkafka's queue full while the broker is
/// down) must not hold up the relay: it once waited inside the engine's loop, which then
/// handled neither lease losses nor a shutdown until every queued submit had timed out (30 s
/// each here). The bound below is a liveness check, a tenth of that, not a performance figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_waiting_for_room_does_not_hold_up_a_shutdown() {
    let bus = KafkaBus::connect(
        KafkaConfig::mock(1)
            .producer_set("queue.buffering.max.messages", "1")
            .queue_full_timeout(Duration::from_secs(30))
            .delivery_timeout(Duration::from_secs(1))
            .flush_timeout(Duration::from_millis(200)),
    )
    .expect("mock cluster");
    let topic = topic();
    bus.provision(&TopicConfig::new(topic.clone())).await.unwrap();
    let (_db, store) = TestDb::create(Kind::Postgres).await;
    let config = fast_config().lease_ttl(Duration::from_secs(60)).drain_timeout(Duration::from_millis(200));
    let relay = Relay::new(store.clone(), bus.clone(), config).start();
    eventually(WAIT, "the relay to hold every partition", || async { relay.stats().partitions == 16 }).await;

    MockBroker(&bus).hold();
    let events: Vec<_> = (0..4).map(|a| event(&format!("agg-{a}"), 0)).collect();
    enqueue_tx(&store, &topic, &events, true).await.unwrap();
    // One event fills librdkafka's queue; the next waits for room.
    eventually(WAIT, "events in flight", || async { relay.stats().in_flight >= 2 }).await;
    let stopped = tokio::time::timeout(Duration::from_secs(3), relay.shutdown()).await;
    MockBroker(&bus).release();
    assert!(stopped.is_ok(), "the shutdown waited for a publish stuck in the client");
}

/// Lease renewals have a connection of their own. They once shared the relay's pool, so a
/// relay whose claim and mark both waited on a lock of the outbox table (a migration, a
/// `VACUUM FULL`, an application's `LOCK TABLE`) could not renew either, and lost every lease
/// for a wait that touched no lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_while_every_outbox_statement_waits_on_a_lock() {
    let (db, store) = TestDb::create(Kind::Postgres).await;
    let topic = topic();
    let gate = MarkGate::held();
    // The default lease: starved renewals lose it after 5 s, which the 8 s wait below covers.
    let config = config("relay-a").lease_ttl(Duration::from_secs(10)).connections(2);
    let relay = Relay::new(store.clone(), MemoryBus::default(), config).mark_gate(&gate).start();
    eventually(WAIT, "the relay to hold every partition", || async { relay.stats().partitions == 16 }).await;
    enqueue_tx(&store, &topic, &[event("agg-0", 0)], true).await.unwrap();
    eventually(WAIT, "the event to be acknowledged", || async { relay.stats().published == 1 }).await;

    // The next claim waits on the lock, and so does the mark once the gate lets it go: both of
    // the relay's pooled connections wait.
    let mut lock = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE courier_outbox IN ACCESS EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    gate.release();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(relay.stats().partitions, 16, "leases were lost while outbox statements waited on a lock");

    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
    eventually(WAIT, "the row to be marked", || async { pending(&store).await == 0 }).await;
    relay.shutdown().await.unwrap();
}

/// Two relays with one instance id would both hold every lease and publish the same events at
/// once: the second refuses to start while the first runs, naming the id. Once the first left,
/// one with its id starts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_with_a_running_relays_instance_id_refuses_to_start() {
    let (_db, store) = TestDb::create(Kind::Postgres).await;
    let first = Relay::new(store.clone(), MemoryBus::default(), config("twin")).start();
    eventually(WAIT, "the first relay to hold every partition", || async { first.stats().partitions == 16 })
        .await;
    let second = Relay::new(store.clone(), MemoryBus::default(), config("twin")).start();
    eventually(WAIT, "the second relay to stop", || async { second.is_finished() }).await;
    let refused = second.shutdown().await.expect_err("refused").to_string();
    assert!(refused.contains(r#"another relay with instance_id "twin" is running"#), "{refused}");
    assert_eq!(first.stats().partitions, 16, "the first relay keeps its leases");

    first.shutdown().await.unwrap();
    let next = Relay::new(store.clone(), MemoryBus::default(), config("twin")).start();
    eventually(WAIT, "the next relay to hold every partition", || async { next.stats().partitions == 16 })
        .await;
    next.shutdown().await.unwrap();
}
