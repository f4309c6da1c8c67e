//! The idempotent consumer (inbox) on every database: a business table changed by a handler
//! through `Inbox::handler` changes once per event and consumer, whether the event comes again
//! later (a redelivery) or at the same moment (concurrent copies), and a handler that fails
//! leaves nothing behind, so the event is handled again.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{event, eventually, topic, Kind, TestDb};
use courier_core::dispatch::{dispatch, DispatchConfig, Handler};
use courier_core::memory::Fault;
use courier_core::{Bus, DeadLetterTopic, Envelope, HandlerError, MemoryBus, PublisherConfig, Topic};
use courier_outbox::{Inbox, InboxConnection, OutboxError, Recorded, Store, StoreTransaction};

const WAIT: Duration = Duration::from_secs(60);

per_database!(
    a_redelivered_event_changes_the_business_table_once,
    a_failed_handler_leaves_no_inbox_row_and_the_redelivery_runs_it,
    a_panicking_handler_rolls_back_and_its_retry_runs_it,
    each_consumer_processes_an_event_once,
    concurrent_copies_of_an_event_apply_it_once,
    concurrent_copies_apply_the_event_once_when_the_first_rolls_back,
    the_purge_removes_only_rows_older_than_the_retention,
    the_purge_goes_on_past_one_chunk,
    migrating_again_keeps_the_inbox,
);

/// A fresh database with the business table `accounts` holding account 1 at balance 0.
async fn setup(kind: Kind) -> (TestDb, Store) {
    let (db, store) = TestDb::create(kind).await;
    store
        .execute_raw("CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)")
        .await
        .unwrap();
    store.execute_raw("INSERT INTO accounts (id, balance) VALUES (1, 0)").await.unwrap();
    (db, store)
}

/// The one value `sql` selects, read on a connection of its own.
async fn scalar(db: &TestDb, sql: &str) -> i64 {
    use sqlx::Connection as _;
    match db.kind {
        Kind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
        }
        Kind::MySql => {
            let mut conn = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
        }
        Kind::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
        }
    }
}

async fn balance(db: &TestDb) -> i64 {
    scalar(db, "SELECT balance FROM accounts WHERE id = 1").await
}

async fn inbox_rows(db: &TestDb) -> i64 {
    scalar(db, "SELECT COUNT(*) FROM courier_inbox").await
}

/// A handler on a [`Store`] that adds `amount` to account 1 and counts its runs.
fn credit(inbox: &str, store: &Store, amount: i64, runs: &Arc<AtomicUsize>) -> impl Handler {
    let runs = Arc::clone(runs);
    Inbox::new(inbox).unwrap().handler(store.clone(), move |mut tx: StoreTransaction, _event| {
        let runs = Arc::clone(&runs);
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tx.execute_raw(&format!("UPDATE accounts SET balance = balance + {amount} WHERE id = 1")).await?;
            Ok::<_, OutboxError>(tx)
        }
    })
}

/// Counts the deliveries a handler finished successfully, so a test knows when all were seen.
struct Finished<H>(H, Arc<AtomicUsize>);

impl<H: Handler> Handler for Finished<H> {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        self.0.handle(envelope).await?;
        self.1.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The memory bus delivers the first event twice, as Kafka does with a re-publish (or JetStream
/// past its duplicate window); the dispatch engine runs a handler wrapped on the application's
/// own sqlx pool. The business table changes once per event.
async fn a_redelivered_event_changes_the_business_table_once(kind: Kind) {
    let (db, _store) = setup(kind).await;
    match kind {
        Kind::Postgres => through_dispatch(&db, sqlx::PgPool::connect(&db.url).await.unwrap()).await,
        Kind::MySql => through_dispatch(&db, sqlx::MySqlPool::connect(&db.url).await.unwrap()).await,
        Kind::Sqlite => through_dispatch(&db, sqlx::SqlitePool::connect(&db.url).await.unwrap()).await,
    }
}

async fn through_dispatch<DB>(db: &TestDb, pool: sqlx::Pool<DB>)
where
    DB: sqlx::Database,
    DB::Connection: InboxConnection,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let (bus, topic) = (MemoryBus::default(), topic());
    let deliveries = bus.subscribe(&topic, "billing").await.unwrap();
    let publisher = bus.publisher(PublisherConfig::default());
    bus.inject(Fault::DuplicateDelivery, 1);
    for seq in 0..2 {
        publisher.publish(&topic, event("account-1", seq)).await.unwrap().await.unwrap();
    }

    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    // The one line: the handler's effect and the inbox row commit together.
    let handler = Inbox::new("billing").unwrap().handler(pool, move |mut tx, _event| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE id = 1").execute(&mut *tx).await?;
            Ok::<_, OutboxError>(tx)
        }
    });
    let finished = Arc::new(AtomicUsize::new(0));
    let dead_letters =
        DeadLetterTopic::new(bus.publisher(PublisherConfig::default()), Topic::new("dlq").unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(dispatch(
        deliveries,
        Finished(handler, Arc::clone(&finished)),
        dead_letters,
        DispatchConfig::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    eventually(WAIT, "three deliveries handled", || async { finished.load(Ordering::SeqCst) == 3 }).await;
    stop.send(()).unwrap();
    let stats = consumer.await.unwrap();

    assert_eq!((stats.handled, stats.retries, stats.dead_lettered), (3, 0, 0), "every delivery acknowledged");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the copy was acknowledged without running the handler");
    assert_eq!(balance(db).await, 2, "one change per event");
    assert_eq!(inbox_rows(db).await, 2);
}

/// A handler that fails after changing the business table rolls back its change and the inbox
/// row with it; the redelivery runs it again, and the one after that is skipped.
async fn a_failed_handler_leaves_no_inbox_row_and_the_redelivery_runs_it(kind: Kind) {
    let (db, store) = setup(kind).await;
    let (runs, fail) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(true)));
    let (counted, failing) = (Arc::clone(&runs), Arc::clone(&fail));
    let handler =
        Inbox::new("billing").unwrap().handler(store.clone(), move |mut tx: StoreTransaction, _| {
            let (counted, failing) = (Arc::clone(&counted), Arc::clone(&failing));
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tx.execute_raw("UPDATE accounts SET balance = balance + 1 WHERE id = 1").await?;
                if failing.swap(false, Ordering::SeqCst) {
                    return Err(HandlerError::retryable("the payment service is down"));
                }
                Ok(tx)
            }
        });
    let event = event("account-1", 0);

    let error = handler.handle(&event).await.unwrap_err();
    assert!(error.is_retryable() && error.message().contains("payment service"), "{error:?}");
    assert_eq!((balance(&db).await, inbox_rows(&db).await), (0, 0), "rolled back, both");

    handler.handle(&event).await.unwrap();
    handler.handle(&event).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2, "failed once, ran once more, then skipped");
    assert_eq!((balance(&db).await, inbox_rows(&db).await), (1, 1));

    // The building block alone: a rolled-back record is forgotten.
    let other = common::event("account-1", 1).event_id();
    let inbox = Inbox::new("billing").unwrap();
    let mut tx = store.begin().await.unwrap();
    assert_eq!(inbox.record(&mut tx, other).await.unwrap(), Recorded::New);
    tx.rollback().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert_eq!(inbox.record(&mut tx, other).await.unwrap(), Recorded::New, "after a rollback");
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert_eq!(inbox.record(&mut tx, other).await.unwrap(), Recorded::AlreadyProcessed);
    tx.rollback().await.unwrap();
}

/// A handler that panics after changing the business table (the dispatch engine counts a panic
/// as a failed attempt) leaves its transaction to be rolled back as it unwinds: the retry is not
/// held up by the first attempt's inbox row and applies the event once.
async fn a_panicking_handler_rolls_back_and_its_retry_runs_it(kind: Kind) {
    let (db, store) = setup(kind).await;
    let (bus, topic) = (MemoryBus::default(), topic());
    let deliveries = bus.subscribe(&topic, "billing").await.unwrap();
    bus.publisher(PublisherConfig::default())
        .publish(&topic, event("account-1", 0))
        .await
        .unwrap()
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let handler =
        Inbox::new("billing").unwrap().handler(store.clone(), move |mut tx: StoreTransaction, _| {
            let counted = Arc::clone(&counted);
            async move {
                let run = counted.fetch_add(1, Ordering::SeqCst);
                tx.execute_raw("UPDATE accounts SET balance = balance + 1 WHERE id = 1").await?;
                assert!(run > 0, "the first attempt panics");
                Ok::<_, OutboxError>(tx)
            }
        });
    let finished = Arc::new(AtomicUsize::new(0));
    let dead_letters =
        DeadLetterTopic::new(bus.publisher(PublisherConfig::default()), Topic::new("dlq").unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config =
        DispatchConfig::default().backoff(courier_core::Backoff::default().initial(Duration::from_millis(1)));
    let consumer = tokio::spawn(dispatch(
        deliveries,
        Finished(handler, Arc::clone(&finished)),
        dead_letters,
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    eventually(WAIT, "the event handled", || async { finished.load(Ordering::SeqCst) == 1 }).await;
    stop.send(()).unwrap();
    let stats = consumer.await.unwrap();
    assert_eq!((stats.handled, stats.retries, stats.dead_lettered), (1, 1, 0));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!((balance(&db).await, inbox_rows(&db).await), (1, 1));
}

/// Two consumers of one event each apply it once, however often it comes.
async fn each_consumer_processes_an_event_once(kind: Kind) {
    let (db, store) = setup(kind).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let billing = credit("billing", &store, 1, &runs);
    let audit = credit("audit", &store, 100, &runs);
    let event = event("account-1", 0);
    for _ in 0..2 {
        billing.handle(&event).await.unwrap();
        audit.handle(&event).await.unwrap();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!((balance(&db).await, inbox_rows(&db).await), (101, 2));
}

/// Four copies of one event handled at the same moment, on four connections, apply it once:
/// the first to insert the inbox row holds the others' inserts until it commits (checked on
/// PostgreSQL and MariaDB by their lock waits, before the first may go on), and they then find
/// the row. No read decides before the write.
async fn concurrent_copies_of_an_event_apply_it_once(kind: Kind) {
    let runs = concurrent_copies(kind, false).await;
    assert_eq!(runs, 1, "one copy ran the handler");
}

/// As above, but the first copy's handler fails while the others wait: its rollback lets one of
/// them run the handler, and the rest skip. On MariaDB the waiters may deadlock on the freed key;
/// that error is retryable, and the copy's retry skips the event.
async fn concurrent_copies_apply_the_event_once_when_the_first_rolls_back(kind: Kind) {
    let runs = concurrent_copies(kind, true).await;
    assert_eq!(runs, 2, "the failed copy, then one of the others");
}

/// Handles four copies of one event at once, the first handler run failing if `first_fails`,
/// each copy retried while its error is retryable (as the dispatch engine would). Checks that
/// the effect happened once and returns how many times the handler ran.
async fn concurrent_copies(kind: Kind, first_fails: bool) -> usize {
    const COPIES: usize = 4;
    let (db, store) = setup(kind).await;
    let waiting = match kind {
        Kind::Postgres => {
            Some("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
        }
        // The inserts still executing: one that is not waiting on the first copy's row returns
        // at once. (MariaDB's INNODB_TRX view left some waiting transactions out under load.)
        Kind::MySql => Some(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() \
             AND COMMAND = 'Execute' AND INFO LIKE 'INSERT IGNORE INTO courier_inbox%'",
        ),
        // One writer at a time: the others wait in SQLite's busy handler, which is not visible.
        Kind::Sqlite => None,
    };
    let db = Arc::new(db);
    let runs = Arc::new(AtomicUsize::new(0));
    let (counted, observed) = (Arc::clone(&runs), Arc::clone(&db));
    let handler =
        Inbox::new("billing").unwrap().handler(store.clone(), move |mut tx: StoreTransaction, _| {
            let (counted, db) = (Arc::clone(&counted), Arc::clone(&observed));
            async move {
                let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
                if let (true, Some(waiting)) = (first, waiting) {
                    eventually(WAIT, "the other copies waiting on the inbox row", || async {
                        scalar(&db, waiting).await == (COPIES - 1) as i64
                    })
                    .await;
                }
                tx.execute_raw("UPDATE accounts SET balance = balance + 1 WHERE id = 1").await?;
                if first && first_fails {
                    return Err(HandlerError::retryable("the first copy fails"));
                }
                Ok(tx)
            }
        });
    let handler = Arc::new(handler);
    let event = event("account-1", 0);
    let start = Arc::new(tokio::sync::Barrier::new(COPIES));
    let copies: Vec<_> = (0..COPIES)
        .map(|_| {
            let (handler, event, start) = (Arc::clone(&handler), event.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                for _ in 0..5 {
                    match handler.handle(&event).await {
                        Ok(()) => return,
                        Err(error) => assert!(error.is_retryable(), "{error:?}"),
                    }
                }
                panic!("a copy failed five times");
            })
        })
        .collect();
    for copy in copies {
        copy.await.unwrap();
    }
    assert_eq!((balance(&db).await, inbox_rows(&db).await), (1, 1), "applied once");
    runs.load(Ordering::SeqCst)
}

/// The purge deletes the rows processed before the retention, of every consumer, and keeps
/// the younger ones; a purged event is processed again if it comes back.
async fn the_purge_removes_only_rows_older_than_the_retention(kind: Kind) {
    let (db, store) = setup(kind).await;
    let (old, young) = (event("account-1", 0).event_id(), event("account-1", 1).event_id());
    let (billing, audit) = (Inbox::new("billing").unwrap(), Inbox::new("audit").unwrap());
    let mut tx = store.begin().await.unwrap();
    for inbox in [&billing, &audit] {
        for id in [old, young] {
            assert_eq!(inbox.record(&mut tx, id).await.unwrap(), Recorded::New);
        }
    }
    // Processed two hours ago.
    tx.execute_raw(&format!(
        "UPDATE courier_inbox SET processed_at_us = processed_at_us - 7200000000 WHERE event_id = '{old}'"
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(store.purge_inbox(Duration::from_secs(3600)).await.unwrap(), 2);
    assert_eq!(store.purge_inbox(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(inbox_rows(&db).await, 2);
    let mut tx = store.begin().await.unwrap();
    for inbox in [&billing, &audit] {
        assert_eq!(inbox.record(&mut tx, young).await.unwrap(), Recorded::AlreadyProcessed, "kept");
        assert_eq!(inbox.record(&mut tx, old).await.unwrap(), Recorded::New, "purged");
    }
    tx.rollback().await.unwrap();
}

/// The purge deletes in chunks of 5,000 rows, so that it never holds long locks, and goes on
/// until every old row is gone.
async fn the_purge_goes_on_past_one_chunk(kind: Kind) {
    const OLD: i64 = 12_000;
    let (db, store) = setup(kind).await;
    let insert = match kind {
        Kind::Postgres => {
            format!("INSERT INTO courier_inbox SELECT 'bulk', g::text, 1 FROM generate_series(1, {OLD}) g")
        }
        // MariaDB's sequence engine: seq_1_to_N is a table of the numbers 1 to N.
        Kind::MySql => format!("INSERT INTO courier_inbox SELECT 'bulk', seq, 1 FROM seq_1_to_{OLD}"),
        Kind::Sqlite => format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {OLD}) \
             INSERT INTO courier_inbox SELECT 'bulk', n, 1 FROM g"
        ),
    };
    store.execute_raw(&insert).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let young = event("account-1", 0).event_id();
    assert_eq!(Inbox::new("billing").unwrap().record(&mut tx, young).await.unwrap(), Recorded::New);
    tx.commit().await.unwrap();

    assert_eq!(store.purge_inbox(Duration::from_secs(3600)).await.unwrap(), OLD as u64);
    assert_eq!(inbox_rows(&db).await, 1, "the young row is kept");
}

/// `Store::migrate` may run at every start: once the inbox exists, it keeps it and its rows.
async fn migrating_again_keeps_the_inbox(kind: Kind) {
    let (db, store) = setup(kind).await;
    let inbox = Inbox::new("billing").unwrap();
    let id = event("account-1", 0).event_id();
    let mut tx = store.begin().await.unwrap();
    assert_eq!(inbox.record(&mut tx, id).await.unwrap(), Recorded::New);
    tx.commit().await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(inbox_rows(&db).await, 1);
    let mut tx = store.begin().await.unwrap();
    assert_eq!(inbox.record(&mut tx, id).await.unwrap(), Recorded::AlreadyProcessed);
    tx.rollback().await.unwrap();
}
