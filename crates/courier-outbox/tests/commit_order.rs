//! Row ids are assigned at insert, rows become visible at commit: a transaction can commit after
//! the relay's cursor has passed its row. Its aggregate's next event must still come after it.
//! (SQLite serialises writers, so only the server databases can commit out of id order.)

mod common;

use common::{consume, enqueue_many, enqueue_tx, event, eventually, fast_config, topic, Kind, TestDb};
use courier_core::{Envelope, MemoryBus, Topic};
use courier_outbox::{Enqueue, Outbox, Relay, RelayConfig, RelayHandle, Store};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

per_database!(
    @db postgres,
    Postgres,
    late_commit_is_not_overtaken,
    late_commit_behind_an_unmarked_row_is_not_overtaken,
    late_commit_is_found_without_a_sweep,
    late_commit_is_found_by_the_sweep
);
per_database!(
    @db mysql,
    MySql,
    late_commit_is_not_overtaken,
    late_commit_behind_an_unmarked_row_is_not_overtaken,
    late_commit_is_found_without_a_sweep,
    late_commit_is_found_by_the_sweep
);

/// Relay settings that keep it reading by cursor over a backlog: small batches, and no sweep
/// to go back for a row the cursor passed.
fn cursor_config() -> RelayConfig {
    fast_config().batch_size(10).partitions(1).sweep_interval(Duration::from_secs(3600))
}

/// Enqueues `late` in a transaction that commits only once a relay, started over a `backlog`
/// of other events committed meanwhile, has read past its row.
async fn start_past_uncommitted(
    store: &Store,
    bus: &MemoryBus,
    topic: &Topic,
    late: &Envelope,
    backlog: usize,
) -> RelayHandle {
    with_tx!(store, true, |tx| {
        Outbox::default().enqueue(&mut tx, Enqueue::new(late).topic(topic)).await.unwrap();
        enqueue_many(store, topic, 100, backlog as u64 / 100, 4).await;
        let relay = Relay::new(store.clone(), bus.clone(), cursor_config()).start();
        eventually(WAIT, "the relay to pass the uncommitted row", || async {
            relay.stats().published >= 100
        })
        .await;
        relay
    })
}

/// Reads all `expected` events and checks each aggregate's order, then stops the relay.
async fn assert_all_in_order(bus: &MemoryBus, topic: &Topic, expected: usize, relay: RelayHandle) {
    let consumed = consume(bus, topic, expected, WAIT).await;
    assert_eq!(consumed.distinct(), expected);
    assert_eq!(consumed.order_violations, 0, "the late event was overtaken by its successor");
    relay.shutdown().await.unwrap();
}

async fn late_commit_is_not_overtaken(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let backlog = 20_000;
    let relay = start_past_uncommitted(&store, &bus, &topic, &event("late", 0), backlog).await;
    // The late row is committed now; its aggregate's next event follows while the relay is
    // still working through the backlog.
    enqueue_tx(&store, &topic, &[event("late", 1)], true).await.unwrap();
    assert!(relay.stats().published < backlog as u64, "the backlog drained too early to test anything");
    assert_all_in_order(&bus, &topic, backlog + 2, relay).await;
}

/// Aggregate `held` has three events: 0 is published but its mark waits (a transaction holds
/// its row lock), so it is still pending and in the relay's memory; 1 commits after the relay's
/// cursor passed it; 2 commits after 1. Event 2 must not overtake 1, although the aggregate's
/// oldest pending row (event 0) is one the relay knows.
async fn late_commit_behind_an_unmarked_row_is_not_overtaken(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let backlog = 5_000;
    enqueue_tx(&store, &topic, &[event("held", 0)], true).await.unwrap();
    let relay = with_tx!(&store, false, |lock| {
        // Locked by primary key (event 0 is the only row, found by a non-locking subquery): a
        // lock by aggregate would also lock the index gap (MySQL) and block the insert of the
        // aggregate's next event.
        lock.execute_raw(
            "SELECT id FROM courier_outbox WHERE id = (SELECT MIN(id) FROM courier_outbox) FOR UPDATE",
        )
        .await
        .unwrap();
        let relay = start_past_uncommitted(&store, &bus, &topic, &event("held", 1), backlog).await;
        enqueue_tx(&store, &topic, &[event("held", 2)], true).await.unwrap();
        assert!(relay.stats().published < backlog as u64, "the backlog drained too early to test anything");
        // All of it while event 0's mark still waits.
        eventually(WAIT, "the relay to publish every event", || async {
            relay.stats().published >= backlog as u64 + 3
        })
        .await;
        relay
    });
    assert_all_in_order(&bus, &topic, backlog + 3, relay).await;
}

/// A late row with no later event of its aggregate to point back at it is still found without
/// a sweep once the relay has caught up, although the relay moved on since rows before it were
/// published.
async fn late_commit_is_found_without_a_sweep(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let config = fast_config().partitions(1).sweep_interval(Duration::from_secs(3600));
    enqueue_many(&store, &topic, 10, 5, 2).await;
    let relay = Relay::new(store.clone(), bus.clone(), config).start();
    eventually(WAIT, "the first rows to be published", || async { relay.stats().published >= 50 }).await;
    with_tx!(&store, true, |tx| {
        Outbox::default().enqueue(&mut tx, Enqueue::new(&event("late", 0)).topic(&topic)).await.unwrap();
        enqueue_tx(&store, &topic, &[event("other", 0)], true).await.unwrap();
        eventually(WAIT, "the relay to pass the uncommitted row", || async { relay.stats().published >= 51 })
            .await;
    });
    let consumed = consume(&bus, &topic, 52, WAIT).await;
    assert_eq!(consumed.distinct(), 52, "the late row was left for the sweep");
    relay.shutdown().await.unwrap();
}

/// A row whose transaction was open before the relay started and commits long after the
/// relay's first pass went past it, with no later event of its aggregate to point back at it,
/// is left to the sweep, whose walk from the oldest row finds it.
async fn late_commit_is_found_by_the_sweep(kind: Kind) {
    let (_db, store) = TestDb::create(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let sweep_interval = Duration::from_millis(500);
    let config = fast_config().partitions(1).sweep_interval(sweep_interval);
    let relay = with_tx!(&store, true, |tx| {
        Outbox::default().enqueue(&mut tx, Enqueue::new(&event("late", 0)).topic(&topic)).await.unwrap();
        enqueue_many(&store, &topic, 10, 5, 2).await;
        let relay = Relay::new(store.clone(), bus.clone(), config).start();
        eventually(WAIT, "the relay to pass the uncommitted row", || async { relay.stats().published >= 50 })
            .await;
        // Several horizons: caught-up claims no longer start below the late row.
        tokio::time::sleep(sweep_interval * 4).await;
        relay
    });
    let consumed = consume(&bus, &topic, 51, WAIT).await;
    assert_eq!(consumed.distinct(), 51, "the late row was never found");
    relay.shutdown().await.unwrap();
}
