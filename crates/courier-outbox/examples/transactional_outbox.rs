//! The transactional outbox end to end: an order and its event are written in one transaction
//! of the application's own sqlx pool, and a relay publishes the event to the in-memory bus,
//! where a consumer receives it.
//!
//! ```text
//! cargo run -p courier-outbox --all-features --example transactional_outbox [DATABASE_URL]
//! ```
//!
//! Without a URL it uses SQLite in a temporary file; `postgres://postgres@127.0.0.1:5432/postgres`
//! and `mysql://root@127.0.0.1:3306/test` work as well.

use std::str::FromStr;
use std::time::Duration;

use courier_core::dispatch::Delivery as _;
use courier_core::{Bus, Envelope, MemoryBus, Topic};
use courier_outbox::{Enqueue, Outbox, OutboxConnection, Relay, RelayConfig, Store, TopicMapper};
use futures::StreamExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let scratch = std::env::temp_dir().join(format!("courier-outbox-example-{}.db", std::process::id()));
    let url = std::env::args().nth(1).unwrap_or_else(|| format!("sqlite://{}", scratch.display()));
    // An application knows its database; this example picks the pool type from the URL.
    let outcome = match url.split(':').next().unwrap_or_default() {
        "postgres" | "postgresql" => run(sqlx::PgPool::connect(&url).await?).await,
        "mysql" | "mariadb" => {
            run(sqlx::MySqlPool::connect(&url.replacen("mariadb:", "mysql:", 1)).await?).await
        }
        "sqlite" => {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
            run(sqlx::SqlitePool::connect_with(options).await?).await
        }
        _ => Err(format!("unsupported database URL {url:?}").into()),
    };
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", scratch.display()));
    }
    outcome
}

/// Everything below is the same for each database.
async fn run<DB>(pool: sqlx::Pool<DB>) -> Result<(), Error>
where
    DB: sqlx::Database,
    DB::Connection: OutboxConnection,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    Store: From<sqlx::Pool<DB>>,
{
    // The outbox shares the application's pool; its tables live next to the business tables.
    let store = Store::from(pool.clone());
    store.migrate().await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS example_orders (id BIGINT PRIMARY KEY, state VARCHAR(32) NOT NULL)",
    )
    .execute(&pool)
    .await?;

    let topic = Topic::new("orders")?;
    let outbox = Outbox::new(TopicMapper::new().map("order", topic.clone()));
    let bus = MemoryBus::default();
    let mut orders = bus.subscribe(&topic, "billing").await?;
    let relay = Relay::new(store.clone(), bus.clone(), RelayConfig::default()).start();

    // The business change and its event commit together, or neither does.
    let order_id = i64::from(rand::random::<u32>());
    let placed = Envelope::builder("order", format!("order-{order_id}"), "OrderPlaced")
        .payload(format!(r#"{{"order_id":{order_id}}}"#))
        .build()?;
    let mut tx = pool.begin().await?;
    // The id is a number this program made, so it is written into the SQL text: placeholders
    // differ between databases ($1 or ?), which an application written for one does not meet.
    sqlx::raw_sql(&format!("INSERT INTO example_orders (id, state) VALUES ({order_id}, 'placed')"))
        .execute(&mut *tx)
        .await?;
    outbox
        .enqueue(&mut *tx, Enqueue::new(&placed).idempotency_key(&format!("order-{order_id}:placed")))
        .await?;
    tx.commit().await?;
    println!("committed order {order_id} and its event on {}", store.backend());

    let delivery = tokio::time::timeout(Duration::from_secs(10), orders.next())
        .await?
        .ok_or("the subscription ended")?;
    let received = delivery.envelope().clone();
    delivery.ack().await?;
    println!("received {} of {} from topic {topic}", received.event_type(), received.aggregate_id());
    assert_eq!(received.event_id(), placed.event_id());

    relay.shutdown().await?;
    println!("outbox: {:?}", store.stats().await?);
    Ok(())
}
