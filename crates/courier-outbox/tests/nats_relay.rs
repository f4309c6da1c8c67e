//! The relay against the shared nats-server and PostgreSQL: broker states that pass (here, a
//! topic whose stream does not exist yet) are retried with backoff instead of killing the row.

mod common;

use std::time::Duration;

use common::{enqueue_tx, event, eventually, fast_config, nats, topic, Kind, TestDb};
use courier_core::{Bus, TopicConfig};
use courier_outbox::Relay;

const WAIT: Duration = Duration::from_secs(60);

/// `(status, attempts, last_error)` of the row holding `event_id`.
async fn row(pool: &sqlx::PgPool, event_id: &str) -> (String, i64, Option<String>) {
    sqlx::query_as("SELECT status, attempts, last_error FROM courier_outbox WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A row whose topic has no stream yet stays pending and is retried, its `last_error` naming the
/// subject; once the topic is provisioned, the next attempt publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_for_a_topic_without_stream_is_retried_until_the_stream_exists() {
    let (db, store) = TestDb::create(Kind::Postgres).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let bus = nats().await;
    let topic = topic();
    let waiting = event("order-1", 0);
    let event_id = waiting.event_id().to_string();
    enqueue_tx(&store, &topic, std::slice::from_ref(&waiting), true).await.unwrap();

    // Room for many retries between seeing them and provisioning, however slow the machine.
    let config = fast_config().max_attempts(1_000);
    let relay = Relay::new(store.clone(), bus.clone(), config).start();

    // At least one retry after the first failure, or the row's end if it went dead instead.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (status, attempts, last_error) = loop {
        let row = row(&pool, &event_id).await;
        if row.1 >= 2 || row.0 != "pending" {
            break row;
        }
        assert!(tokio::time::Instant::now() < deadline, "no publish attempt within {WAIT:?}: {row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        status, "pending",
        "a missing stream made the row {status} after {attempts} attempt(s): {last_error:?}"
    );
    assert!(attempts >= 2, "retried: {attempts}");
    let last_error = last_error.expect("the failure is recorded");
    assert!(last_error.contains(&format!("subject {:?}", topic.as_str())), "{last_error}");
    assert_eq!(relay.stats().dead, 0);

    bus.provision(&TopicConfig::new(topic.clone())).await.unwrap();
    eventually(WAIT, "the row to be published once the stream exists", || async {
        row(&pool, &event_id).await.0 == "published"
    })
    .await;
    relay.shutdown().await.unwrap();
    let stream = courier_nats::stream_name(&topic);
    let info = bus.jetstream().get_stream(&stream).await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.state.messages, 1, "stored once");
    bus.delete_topic(&topic).await.unwrap();
}
