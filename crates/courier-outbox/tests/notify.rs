//! PostgreSQL LISTEN/NOTIFY: an idle relay is woken by commits, and writers notify only while a
//! relay waits for it (NOTIFY serialises commits, so a busy or absent relay must not cost it).

mod common;

use std::time::Duration;

use common::{consume, enqueue_tx, event, fast_config, topic, Kind, TestDb};
use courier_core::MemoryBus;
use courier_outbox::{Relay, RelayConfig};
use sqlx::postgres::PgListener;

/// A relay that only NOTIFY can wake once it has caught up: polling and sweeps practically
/// disabled.
fn notify_only_config() -> RelayConfig {
    let hour = Duration::from_secs(3600);
    fast_config().poll_interval(hour).busy_poll_interval(hour).sweep_interval(hour)
}

/// Waits until a relay has flagged itself idle, i.e. asks writers to NOTIFY it.
async fn wait_until_listening(pool: &sqlx::PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sqlx::query_scalar::<_, Option<bool>>("SELECT bool_or(listening) FROM courier_outbox_relays")
        .fetch_one(pool)
        .await
        .unwrap()
        .unwrap_or(false)
    {
        assert!(tokio::time::Instant::now() < deadline, "the idle relay never asked for NOTIFY");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_an_idle_relay() {
    let (db, store) = TestDb::create(Kind::Postgres).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let relay = Relay::new(store.clone(), bus.clone(), notify_only_config()).start();
    for seq in 0..3 {
        wait_until_listening(&pool).await;
        enqueue_tx(&store, &topic, &[event("order-1", seq)], true).await.unwrap();
        let consumed = consume(&bus, &topic, seq as usize + 1, Duration::from_secs(10)).await;
        assert_eq!(consumed.distinct(), seq as usize + 1, "woken by NOTIFY, not by polling");
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_notify_only_while_a_relay_waits() {
    let (db, store) = TestDb::create(Kind::Postgres).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen("courier_outbox").await.unwrap();
    let quiet = Duration::from_millis(500);

    enqueue_tx(&store, &topic, &[event("order-1", 0)], true).await.unwrap();
    assert!(tokio::time::timeout(quiet, listener.recv()).await.is_err(), "notified with no relay running");

    let relay = Relay::new(store.clone(), bus.clone(), notify_only_config()).start();
    assert_eq!(consume(&bus, &topic, 1, Duration::from_secs(10)).await.distinct(), 1);
    // The relay flags itself idle once no new rows arrived for `idle_after`.
    wait_until_listening(&sqlx::PgPool::connect(&db.url).await.unwrap()).await;
    // Drop anything queued while the relay was starting.
    while tokio::time::timeout(Duration::from_millis(50), listener.recv()).await.is_ok() {}
    enqueue_tx(&store, &topic, &[event("order-1", 1)], true).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("an idle relay waits for NOTIFY, so the commit notifies")
        .unwrap();
    assert_eq!(consume(&bus, &topic, 2, Duration::from_secs(10)).await.distinct(), 2);

    relay.shutdown().await.unwrap();
    while tokio::time::timeout(Duration::from_millis(50), listener.recv()).await.is_ok() {}
    enqueue_tx(&store, &topic, &[event("order-1", 2)], true).await.unwrap();
    assert!(tokio::time::timeout(quiet, listener.recv()).await.is_err(), "notified after the relay left");
}
