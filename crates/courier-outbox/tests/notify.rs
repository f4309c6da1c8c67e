//! PostgreSQL LISTEN/NOTIFY wakes the relay: with polling and sweeps practically disabled, an
//! event committed after the relay went idle is still published.

mod common;

use std::time::Duration;

use common::{consume, enqueue_tx, event, fast_config, topic, Kind, TestDb};
use courier_core::MemoryBus;
use courier_outbox::Relay;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_an_idle_relay() {
    let (_db, store) = TestDb::create(Kind::Postgres).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let mut config = fast_config();
    config.poll_interval = Duration::from_secs(3600);
    config.sweep_interval = Duration::from_secs(3600);
    let relay = Relay::new(store.clone(), bus.clone(), config).start();
    // Let it acquire its partitions and go idle (its first claims find nothing).
    tokio::time::sleep(Duration::from_millis(800)).await;
    for seq in 0..3 {
        enqueue_tx(&store, &topic, &[event("order-1", seq)], true).await.unwrap();
        let consumed = consume(&bus, &topic, seq as usize + 1, Duration::from_secs(10)).await;
        assert_eq!(consumed.distinct(), seq as usize + 1, "woken by NOTIFY, not by polling");
    }
    relay.shutdown().await.unwrap();
}
