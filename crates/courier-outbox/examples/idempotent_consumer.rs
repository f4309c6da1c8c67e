//! An idempotent consumer: the in-memory bus delivers a payment event twice (as Kafka does with a
//! re-publish), and a handler wrapped by `Inbox::handler` credits the account once, because the
//! inbox row and the credit commit in one transaction of the application's own sqlx pool.
//!
//! ```text
//! cargo run -p courier-outbox --all-features --example idempotent_consumer [DATABASE_URL]
//! ```
//!
//! Without a URL it uses SQLite in a temporary file; `postgres://postgres@127.0.0.1:5432/postgres`
//! and `mysql://root@127.0.0.1:3306/test` work as well.

use std::str::FromStr;
use std::time::Duration;

use courier_core::dispatch::{dispatch, DispatchConfig};
use courier_core::memory::Fault;
use courier_core::{Bus, DeadLetterTopic, Envelope, HandlerError, MemoryBus, PublisherConfig, Topic};
use courier_outbox::{Inbox, InboxConnection, OutboxError, Store};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let scratch = std::env::temp_dir().join(format!("courier-inbox-example-{}.db", std::process::id()));
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
    DB::Connection: InboxConnection,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'r> i64: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    Store: From<sqlx::Pool<DB>>,
{
    // The inbox table is created by the outbox's migrations, next to the business tables.
    Store::from(pool.clone()).migrate().await?;
    let account = i64::from(rand::random::<u32>());
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_accounts (id BIGINT PRIMARY KEY, balance_cents BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await?;
    // The id is a number this program made, so it is written into the SQL text: placeholders
    // differ between databases ($1 or ?), which an application written for one does not meet.
    sqlx::query(&format!("INSERT INTO example_accounts (id, balance_cents) VALUES ({account}, 0)"))
        .execute(&pool)
        .await?;

    let bus = MemoryBus::default();
    let topic = Topic::new("payments")?;
    let deliveries = bus.subscribe(&topic, "ledger").await?;
    let publisher = bus.publisher(PublisherConfig::default());
    bus.inject(Fault::DuplicateDelivery, 1); // the first payment reaches the consumer twice
    for cents in [4200, 800] {
        let event = Envelope::builder("account", format!("account-{account}"), "PaymentTaken")
            .payload(cents.to_string())
            .build()?;
        publisher.publish(&topic, event).await?.await?;
    }

    // The one line that makes the effect happen once per event.
    let handler = Inbox::new("ledger")?.handler(pool.clone(), move |mut tx, event: Envelope| async move {
        let cents: i64 = std::str::from_utf8(event.payload())
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| HandlerError::permanent("the payload is not an amount in cents"))?;
        let credit = format!(
            "UPDATE example_accounts SET balance_cents = balance_cents + {cents} WHERE id = {account}"
        );
        sqlx::query(&credit).execute(&mut *tx).await.map_err(OutboxError::from)?;
        Ok::<_, HandlerError>(tx)
    });

    // Events of one account are handled in order: once the second payment shows, the copy of the
    // first has been handled too.
    let balance = format!("SELECT balance_cents FROM example_accounts WHERE id = {account}");
    let both_applied = async {
        while sqlx::query_scalar::<_, i64>(&balance).fetch_one(&pool).await.unwrap_or_default() < 5000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let dead_letters =
        DeadLetterTopic::new(bus.publisher(PublisherConfig::default()), Topic::new("payments-dlq")?);
    let stats = tokio::time::timeout(
        Duration::from_secs(30),
        dispatch(deliveries, handler, dead_letters, DispatchConfig::default(), both_applied),
    )
    .await?;
    let cents: i64 = sqlx::query_scalar(&balance).fetch_one(&pool).await?;
    println!("{} deliveries of 2 payments handled; the balance is {cents} cents", stats.handled);
    assert_eq!((stats.handled, cents), (3, 5000), "the duplicate changed nothing");
    Ok(())
}
