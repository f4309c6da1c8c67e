//! [`Store`]: the outbox tables of one database, for the relay and for operators.

use std::time::Duration;

use courier_core::EventId;
use sqlx::Executor as _;

use crate::admin::{
    Backlog, EventDetail, EventFilter, EventStatus, EventSummary, OutboxStats, ParkedAggregate, RelayInstance,
};
use crate::row::{now_us, ClaimedRow, DEAD, PENDING, PUBLISHED};
use crate::sql::queries::{Order, Queries};
use crate::sql::{BlockedRow, ClaimQuery, Dialect, Failure, Mark, OutboxConnection, OwnerCheck};
use crate::{Enqueue, Outbox, OutboxError};

/// A connection pool to a database holding the outbox tables. Cheap to clone.
///
/// Made by [`Store::connect`] from a URL, or from an application's own sqlx pool
/// (`Store::from(pool)`), so that the relay and the business share it.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

/// The pool of each database, behind its cargo feature. Empty without one: the crate then
/// builds, but [`Store::connect`] refuses every URL.
#[derive(Debug, Clone)]
enum Backend {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

/// The one place that picks the database: matches `$value` (a [`Backend`] or a [`Tx`]) and
/// evaluates `$body` with `$binding` bound to that database's pool or transaction. Bodies call
/// code generic over the database ([`Queries`], [`Dialect`]), so each arm is the same text with
/// another type.
macro_rules! dispatch {
    ($value:expr, $enum:ident, $binding:pat => $body:expr) => {
        match $value {
            #[cfg(feature = "postgres")]
            $enum::Postgres($binding) => $body,
            #[cfg(feature = "mysql")]
            $enum::MySql($binding) => $body,
            #[cfg(feature = "sqlite")]
            $enum::Sqlite($binding) => $body,
        }
    };
}

/// The database name of a pool, for [`Store::backend`].
fn name_of<D: Dialect>(_: &sqlx::Pool<D>) -> &'static str {
    D::BACKEND
}

/// How long ago `created_us` (microseconds since the epoch) was; zero if it lies ahead.
fn age_since(created_us: i64) -> Duration {
    Duration::from_micros(u64::try_from(now_us() - created_us).unwrap_or_default())
}

/// Purge deletes in chunks so it never holds long locks.
const PURGE_CHUNK: i64 = 5000;

/// The `*_us` time `retention` before now.
fn cutoff_us(retention: Duration) -> i64 {
    now_us() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX)
}

/// Runs `delete_chunk` (a DELETE of at most [`PURGE_CHUNK`] rows) until a chunk comes back
/// short; returns how many rows were deleted in all.
async fn purge_in_chunks<F, Fut>(mut delete_chunk: F) -> Result<u64, OutboxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, sqlx::Error>>,
{
    let mut total = 0;
    loop {
        let deleted = delete_chunk().await?;
        total += deleted;
        if deleted < PURGE_CHUNK as u64 {
            return Ok(total);
        }
    }
}

#[cfg(feature = "postgres")]
impl From<sqlx::PgPool> for Store {
    /// Uses an existing PostgreSQL pool, e.g. the application's.
    fn from(pool: sqlx::PgPool) -> Self {
        Self { backend: Backend::Postgres(pool) }
    }
}

#[cfg(feature = "mysql")]
impl From<sqlx::MySqlPool> for Store {
    /// Uses an existing MySQL / MariaDB pool, e.g. the application's.
    fn from(pool: sqlx::MySqlPool) -> Self {
        Self { backend: Backend::MySql(pool) }
    }
}

#[cfg(feature = "sqlite")]
impl From<sqlx::SqlitePool> for Store {
    /// Uses an existing SQLite pool, e.g. the application's. Open it in WAL mode (as
    /// [`Store::connect`] does) so the relay's reads never wait for a writer.
    fn from(pool: sqlx::SqlitePool) -> Self {
        Self { backend: Backend::Sqlite(pool) }
    }
}

impl Store {
    /// Connects to `url` (`postgres://`, `mysql://`/`mariadb://`, `sqlite://`) with a pool of
    /// 16 connections (8 for SQLite). SQLite files are created if missing and opened in WAL
    /// mode so readers never wait for the writer.
    pub async fn connect(url: &str) -> Result<Self, OutboxError> {
        Self::open(url, None).await
    }

    /// Like [`connect`](Self::connect), with a pool of at most `max_connections`: size it to the
    /// tasks that use the store at once, so they never queue for a connection.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self, OutboxError> {
        Self::open(url, Some(max_connections)).await
    }

    async fn open(url: &str, max_connections: Option<u32>) -> Result<Self, OutboxError> {
        let scheme = url.split(':').next().unwrap_or_default();
        let _ = max_connections; // unused without a database feature
        match scheme {
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                refuse_secret_parameters(url)?;
                let options: sqlx::postgres::PgConnectOptions = url.parse()?;
                probe(&options).await.map_err(OutboxError::connecting)?;
                let pool =
                    sqlx::postgres::PgPoolOptions::new().max_connections(max_connections.unwrap_or(16));
                Ok(Self::from(pool.connect_with(options).await?))
            }
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => {
                let options: sqlx::mysql::MySqlConnectOptions =
                    url.replacen("mariadb:", "mysql:", 1).parse()?;
                probe(&options).await.map_err(OutboxError::connecting)?;
                let pool =
                    sqlx::mysql::MySqlPoolOptions::new().max_connections(max_connections.unwrap_or(16));
                Ok(Self::from(pool.connect_with(options).await?))
            }
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                use std::str::FromStr;
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30));
                Ok(Self::from(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(max_connections.unwrap_or(8))
                        .connect_with(options)
                        .await?,
                ))
            }
            _ => Err(OutboxError::Config(format!(
                "unsupported database URL {:?}: expected postgres://, mysql:// or sqlite:// \
                 (each needs its cargo feature)",
                courier_core::redact_url(url)
            ))),
        }
    }

    /// Short database name for logs and metrics (`postgres`, `mysql`, `sqlite`).
    pub fn backend(&self) -> &'static str {
        dispatch!(self.backend, Backend, ref pool => name_of(pool))
    }

    /// Creates or upgrades the outbox tables. The migrations are recorded in sqlx's
    /// `_sqlx_migrations` table next to the application's own (unknown versions are ignored).
    pub async fn migrate(&self) -> Result<(), OutboxError> {
        dispatch!(self.backend, Backend, ref pool => Queries::migrate(pool).await)
    }

    /// Closes the pool: waits for connections in use to be returned and closes them all.
    pub async fn close(&self) {
        dispatch!(self.backend, Backend, ref pool => pool.close().await)
    }

    /// Starts a transaction on the store's database, for tools and tests that enqueue with a
    /// `Store` rather than a pool of their own. Dropping it uncommitted rolls it back.
    pub async fn begin(&self) -> Result<StoreTransaction, OutboxError> {
        let tx: Tx = dispatch!(self.backend, Backend, ref pool => pool.begin().await?.into());
        Ok(StoreTransaction { tx })
    }

    /// Runs SQL text without parameters (one or more statements), e.g. the DDL of tables that
    /// live next to the outbox. Returns the rows affected.
    pub async fn execute_raw(&self, sql: &str) -> Result<u64, OutboxError> {
        // `Executor::execute` returns a boxed future: `RawSql::execute`'s own future is not
        // `Send` for every lifetime, which spawned callers need.
        dispatch!(self.backend, Backend, ref pool => Ok(pool.execute(sqlx::raw_sql(sql)).await?.rows_affected()))
    }

    /// Enqueues `events` in a transaction of their own (for scripts and tools; applications
    /// enqueue inside their business transaction with [`Outbox::enqueue`]).
    pub async fn enqueue(
        &self,
        outbox: &Outbox,
        events: &[Enqueue<'_>],
    ) -> Result<Vec<EventId>, OutboxError> {
        let mut tx = self.begin().await?;
        let ids = outbox.enqueue_batch(&mut tx, events.iter().copied()).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Counts by status and the age of the oldest pending event.
    pub async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let rows: Result<Vec<(String, i64, Option<i64>)>, sqlx::Error> =
            dispatch!(self.backend, Backend, ref pool => Queries::stats(pool).await);
        let rows = rows?;
        let mut stats = OutboxStats::default();
        for (status, count, oldest_us) in rows {
            let count = u64::try_from(count).unwrap_or_default();
            match status.as_str() {
                PENDING => {
                    stats.pending = count;
                    stats.oldest_pending_age = oldest_us.map(age_since);
                }
                PUBLISHED => stats.published = count,
                DEAD => stats.dead = count,
                _ => {}
            }
        }
        Ok(stats)
    }

    /// The pending backlog, read through the pending index: cheap enough to poll for gauges,
    /// where [`stats`](Self::stats) counts every row, a day of published ones included.
    pub async fn backlog(&self) -> Result<Backlog, OutboxError> {
        let read: Result<(i64, Option<i64>), sqlx::Error> =
            dispatch!(self.backend, Backend, ref pool => Queries::backlog(pool).await);
        let (pending, oldest_us) = read?;
        Ok(Backlog {
            pending: u64::try_from(pending).unwrap_or_default(),
            oldest_pending_age: oldest_us.map(age_since),
        })
    }

    /// Whether the database answers a trivial query, for readiness probes.
    pub async fn ping(&self) -> Result<(), OutboxError> {
        let pinged: Result<(), sqlx::Error> =
            dispatch!(self.backend, Backend, ref pool => Queries::ping(pool).await);
        Ok(pinged?)
    }

    /// Dead events matching `filter`, oldest first, at most `limit`.
    pub async fn list_dead(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<EventSummary>, OutboxError> {
        let limit = i64::from(limit);
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::list_dead(pool, filter, limit).await?))
    }

    /// A page of `filter`'s events of `status` (any when `None`), newest first: at most `limit`
    /// events with ids below `below` (the last id of the previous page), or the newest when
    /// `None`. Each page is read through an index from where the previous one ended, however
    /// deep it is.
    pub async fn list_events(
        &self,
        status: Option<EventStatus>,
        filter: &EventFilter,
        below: Option<i64>,
        limit: u32,
    ) -> Result<Vec<EventSummary>, OutboxError> {
        let (order, limit) = (Order::NewestBelow(below), i64::from(limit));
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::list(pool, status, filter, order, limit).await?))
    }

    /// How many of `filter`'s events have `status` (any when `None`): what
    /// [`requeue`](Self::requeue) or [`discard_dead`](Self::discard_dead) would change, for a
    /// confirmation before a bulk action.
    pub async fn count_events(
        &self,
        status: Option<EventStatus>,
        filter: &EventFilter,
    ) -> Result<u64, OutboxError> {
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::count(pool, status, filter, None).await?))
    }

    /// Like [`count_events`](Self::count_events), but stops counting at `cap`: a bounded cost
    /// for counts shown at a glance (a million published rows kept for the retention period
    /// would otherwise all be read).
    pub async fn count_events_up_to(
        &self,
        status: Option<EventStatus>,
        filter: &EventFilter,
        cap: u64,
    ) -> Result<u64, OutboxError> {
        let cap = Some(i64::try_from(cap).unwrap_or(i64::MAX));
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::count(pool, status, filter, cap).await?))
    }

    /// Every column of the event with row id `id`; `None` when there is none.
    pub async fn event(&self, id: i64) -> Result<Option<EventDetail>, OutboxError> {
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::detail(pool, id).await?))
    }

    /// The aggregates parked behind a dead event (the oldest dead event of each), oldest head
    /// first, at most `limit`, with how many of their events wait. Requeueing the head
    /// ([`requeue`](Self::requeue)) publishes it before the waiting events; discarding it
    /// ([`discard_dead`](Self::discard_dead)) skips it and releases the rest.
    pub async fn parked(&self, limit: u32) -> Result<Vec<ParkedAggregate>, OutboxError> {
        let limit = i64::from(limit);
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::parked(pool, limit).await?))
    }

    /// The relay instances sharing the outbox, with the partitions each leases and when its
    /// heartbeat and leases expire.
    pub async fn relay_instances(&self) -> Result<Vec<RelayInstance>, OutboxError> {
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::relays(pool).await?))
    }

    /// Makes the dead events matching `filter` pending again with a fresh attempt budget; their
    /// aggregates resume in order once the relay owning them notices (at its next lease renewal).
    /// Returns how many were requeued.
    pub async fn requeue(&self, filter: &EventFilter) -> Result<u64, OutboxError> {
        let set = "UPDATE courier_outbox SET status = 'pending', attempts = 0, next_attempt_at_us = NULL";
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::change_dead(pool, set, filter).await?))
    }

    /// Deletes the dead events matching `filter`, giving up on them; aggregates they blocked
    /// resume with their next event. Returns how many were deleted.
    pub async fn discard_dead(&self, filter: &EventFilter) -> Result<u64, OutboxError> {
        let delete = "DELETE FROM courier_outbox";
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::change_dead(pool, delete, filter).await?))
    }

    /// Deletes published rows older than `retention` (by publish time); returns how many.
    pub async fn purge_published(&self, retention: Duration) -> Result<u64, OutboxError> {
        let before_us = cutoff_us(retention);
        purge_in_chunks(|| async {
            dispatch!(self.backend, Backend, ref pool => Dialect::purge_published(pool, before_us, PURGE_CHUNK).await)
        })
        .await
    }

    /// Deletes the [`Inbox`](crate::Inbox) rows of every consumer processed longer than
    /// `retention` ago; returns how many. A redelivery of a purged event is processed again, so
    /// keep rows longer than the broker may redeliver (see [`Inbox`](crate::Inbox)).
    pub async fn purge_inbox(&self, retention: Duration) -> Result<u64, OutboxError> {
        let before_us = cutoff_us(retention);
        purge_in_chunks(|| async {
            dispatch!(self.backend, Backend, ref pool => crate::sql::inbox::purge(pool, before_us, PURGE_CHUNK).await)
        })
        .await
    }

    /// Refreshes the database's planner statistics of the outbox table, as its automatic
    /// analysis would on a long-lived table: after a bulk load into an empty table, plans are
    /// otherwise made for an empty table.
    pub async fn analyze(&self) -> Result<(), OutboxError> {
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::analyze(pool).await?))
    }

    /// The relay's claim+mark loop in bare SQL, without publishing: the ceiling `courier bench
    /// outbox` compares the relay to. Claims the next `batch` pending rows in id order in a
    /// transaction (`FOR UPDATE SKIP LOCKED` where the database has it), reads what a relay
    /// reads, and marks them published with one UPDATE (one DELETE when `delete`), until none
    /// remain. Returns how many rows it marked.
    #[doc(hidden)]
    pub async fn bench_claim_and_mark(&self, batch: usize, delete: bool) -> Result<u64, OutboxError> {
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::claim_and_mark(pool, batch, delete).await?))
    }

    /// Makes the oldest pending row of `aggregate_id` dead, as the relay does after its last
    /// attempt: `courier bench outbox --parked` builds a backlog parked behind a dead event with
    /// it. Returns the buried row's id, `None` when the aggregate has no pending row.
    #[doc(hidden)]
    pub async fn bench_bury_head(&self, aggregate_id: &str) -> Result<Option<i64>, OutboxError> {
        dispatch!(self.backend, Backend, ref pool => Ok(Queries::bury_head(pool, aggregate_id).await?))
    }

    /// A new pool of at most `connections` to the same database, so a relay sharing a process
    /// with the application never queues behind business transactions for a connection. SQLite
    /// keeps its pool: it has one writer anyway, and an in-memory database exists only there.
    /// Connections are not pinged on checkout: that would double the round trips of the relay's
    /// short statements, and a broken connection fails its statement, which the relay retries.
    /// PostgreSQL connections get the relay's planner settings.
    pub(crate) fn dedicated(&self, connections: u32) -> Self {
        dispatch!(self.backend, Backend, ref pool => Self::from(Dialect::relay_pool(pool, connections)))
    }

    /// The PostgreSQL pool, for LISTEN/NOTIFY.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        #[allow(irrefutable_let_patterns)]
        if let Backend::Postgres(pool) = &self.backend {
            Some(pool)
        } else {
            None
        }
    }

    pub(crate) async fn ensure_partitions(&self, count: u32) -> Result<(), OutboxError> {
        let want = i64::from(count);
        let existing: Result<i64, sqlx::Error> =
            dispatch!(self.backend, Backend, ref pool => Queries::ensure_partitions(pool, want).await);
        let existing = existing?;
        if existing != want {
            return Err(OutboxError::Config(format!(
                "the outbox has {existing} relay partitions but this relay is configured with {count}; \
                 every relay on one database must use the same partition count"
            )));
        }
        Ok(())
    }

    pub(crate) async fn scan_pending(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        dispatch!(self.backend, Backend, ref pool => Queries::scan_pending(pool, after_id, limit).await)
    }

    pub(crate) async fn fetch_claimed(&self, query: &ClaimQuery) -> Result<Vec<ClaimedRow>, sqlx::Error> {
        dispatch!(self.backend, Backend, ref pool => Queries::fetch_claimed(pool, query).await)
    }

    /// Records publish outcomes: acknowledged rows are kept as published, or deleted when
    /// `delete_published` (retention zero); failed ones get their attempt. Rows whose partition
    /// `owner` no longer holds are left as they are.
    pub(crate) async fn write(
        &self,
        published: &[i64],
        delete_published: bool,
        failures: &[Failure],
        owner: &OwnerCheck,
    ) -> Result<(), sqlx::Error> {
        let mark = if delete_published { Mark::Delete } else { Mark::Keep { published_at_us: now_us() } };
        dispatch!(self.backend, Backend, ref pool => Queries::write(pool, published, mark, failures, owner).await)
    }

    pub(crate) async fn blocked(
        &self,
        partitions: &[i64],
        count: i64,
    ) -> Result<Vec<BlockedRow>, sqlx::Error> {
        dispatch!(self.backend, Backend, ref pool => Queries::blocked(pool, partitions, count).await)
    }

    pub(crate) async fn heartbeat(&self, member: &str, ttl_ms: i64) -> Result<i64, sqlx::Error> {
        dispatch!(self.backend, Backend, ref pool => Queries::heartbeat(pool, member, ttl_ms).await)
    }

    pub(crate) async fn renew(&self, owner: &str, ttl_ms: i64) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        dispatch!(self.backend, Backend, ref pool => Queries::renew(pool, owner, ttl_ms).await)
    }

    pub(crate) async fn acquire(&self, owner: &str, want: i64, ttl_ms: i64) -> Result<(), sqlx::Error> {
        dispatch!(self.backend, Backend, ref pool => Dialect::acquire(pool, owner, want, ttl_ms).await)
    }

    pub(crate) async fn release(&self, owner: &str, partitions: &[i64]) -> Result<(), sqlx::Error> {
        dispatch!(self.backend, Backend, ref pool => Queries::release(pool, owner, partitions).await)
    }

    pub(crate) async fn leave(&self, member: &str) -> Result<(), sqlx::Error> {
        dispatch!(self.backend, Backend, ref pool => Queries::leave(pool, member).await)
    }

    /// Milliseconds until relay `member`'s heartbeat expires (negative once it has); `None`
    /// when it has none.
    pub(crate) async fn heartbeat_left_ms(&self, member: &str) -> Result<Option<i64>, sqlx::Error> {
        dispatch!(self.backend, Backend, ref pool => Queries::heartbeat_left_ms(pool, member).await)
    }
}

/// A transaction on a [`Store`]'s database ([`Store::begin`]). Pass `&mut tx` to
/// [`Outbox::enqueue`] to enqueue in it; dropping it uncommitted rolls it back.
#[derive(Debug)]
pub struct StoreTransaction {
    tx: Tx,
}

/// The transaction of each database; see [`Backend`].
#[derive(Debug)]
enum Tx {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    #[cfg(feature = "mysql")]
    MySql(sqlx::Transaction<'static, sqlx::MySql>),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

#[cfg(feature = "postgres")]
impl From<sqlx::Transaction<'static, sqlx::Postgres>> for Tx {
    fn from(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Self {
        Self::Postgres(tx)
    }
}

#[cfg(feature = "mysql")]
impl From<sqlx::Transaction<'static, sqlx::MySql>> for Tx {
    fn from(tx: sqlx::Transaction<'static, sqlx::MySql>) -> Self {
        Self::MySql(tx)
    }
}

#[cfg(feature = "sqlite")]
impl From<sqlx::Transaction<'static, sqlx::Sqlite>> for Tx {
    fn from(tx: sqlx::Transaction<'static, sqlx::Sqlite>) -> Self {
        Self::Sqlite(tx)
    }
}

impl StoreTransaction {
    /// Runs SQL text without parameters (one or more statements) in the transaction, e.g. the
    /// business change that the enqueued events describe. Returns the rows affected.
    pub async fn execute_raw(&mut self, sql: &str) -> Result<u64, OutboxError> {
        // See `Store::execute_raw` for why not `RawSql::execute`.
        dispatch!(self.tx, Tx, ref mut tx => Ok((&mut **tx).execute(sqlx::raw_sql(sql)).await?.rows_affected()))
    }

    /// Commits the transaction: its events become visible to the relay.
    pub async fn commit(self) -> Result<(), OutboxError> {
        dispatch!(self.tx, Tx, tx => Ok(tx.commit().await?))
    }

    /// Rolls the transaction back: its events are never published.
    pub async fn rollback(self) -> Result<(), OutboxError> {
        dispatch!(self.tx, Tx, tx => Ok(tx.rollback().await?))
    }
}

impl crate::sql::sealed::Sealed for StoreTransaction {}

impl OutboxConnection for StoreTransaction {
    async fn insert(&mut self, rows: Vec<crate::row::NewRow>) -> Result<(), OutboxError> {
        dispatch!(self.tx, Tx, ref mut tx => OutboxConnection::insert(&mut **tx, rows).await)
    }
}

impl crate::inbox::InboxConnection for StoreTransaction {
    async fn record_processed(
        &mut self,
        consumer: &str,
        event_id: String,
        at_us: i64,
    ) -> Result<bool, sqlx::Error> {
        dispatch!(self.tx, Tx, ref mut tx => crate::inbox::InboxConnection::record_processed(&mut **tx, consumer, event_id, at_us).await)
    }
}

/// Refuses a secret-named URL parameter other than `password` (libpq's `sslpassword`, say):
/// sqlx does not take it and logs each parameter it ignores with its value.
#[cfg(feature = "postgres")]
fn refuse_secret_parameters(url: &str) -> Result<(), OutboxError> {
    let query = url.split_once('?').map_or("", |(_, query)| query.split('#').next().unwrap_or_default());
    let keys = query.split('&').filter_map(|pair| pair.split('=').next());
    match keys.into_iter().find(|key| *key != "password" && courier_core::is_secret_setting(key)) {
        Some(key) => Err(OutboxError::Config(format!(
            "unsupported database URL parameter `{key}` (value not shown): PostgreSQL URLs take only \
             `password` as a secret"
        ))),
        None => Ok(()),
    }
}

/// Opens and closes one connection, so that an unreachable server fails at once with its own
/// error. A pool retries a refused connection until its acquire timeout (30 s) and then reports
/// only that it timed out.
#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn probe<O>(options: &O) -> Result<(), sqlx::Error>
where
    O: sqlx::ConnectOptions,
    O::Connection: Sized,
{
    use sqlx::Connection as _;
    options.connect().await?.close().await
}

#[cfg(all(test, feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod tests {
    use courier_core::Envelope;

    use super::*;

    /// Runs `check` on a fresh, migrated database of each kind, with one partition.
    async fn on_each_database<F: std::future::Future<Output = ()>>(check: impl Fn(Store) -> F) {
        let name = format!("courier_u_{:016x}", rand::random::<u64>());
        let servers =
            [("postgres://postgres@127.0.0.1:5432", "test"), ("mysql://root@127.0.0.1:3306", "test")];
        for (server, admin_db) in servers {
            let admin = Store::connect(&format!("{server}/{admin_db}"))
                .await
                .unwrap_or_else(|e| panic!("{server} is required (scripts/services.sh): {e}"));
            admin.execute_raw(&format!("CREATE DATABASE {name}")).await.unwrap();
            let store = Store::connect(&format!("{server}/{name}")).await.unwrap();
            store.migrate().await.unwrap();
            store.ensure_partitions(1).await.unwrap();
            check(store.clone()).await;
            store.close().await;
            // Best effort, like the integration tests' databases.
            let _ = admin.execute_raw(&format!("DROP DATABASE {name}")).await;
        }
        let file = std::env::temp_dir().join(format!("{name}.db"));
        let store = Store::connect(&format!("sqlite://{}?mode=rwc", file.display())).await.unwrap();
        store.migrate().await.unwrap();
        store.ensure_partitions(1).await.unwrap();
        check(store).await;
        let _ = std::fs::remove_file(file);
    }

    fn dead(id: i64) -> Failure {
        Failure { id, attempts: 10, dead: true, next_attempt_at_us: None, error: "refused".into() }
    }

    /// A relay whose lease was taken over (its renewals failed, another relay acquired the
    /// partition) must not mark dead, or published, a row the new owner is publishing.
    #[tokio::test]
    async fn a_relay_changes_no_row_of_a_partition_it_no_longer_leases() {
        on_each_database(|store| async move {
            store.acquire("new-owner", 1, 60_000).await.unwrap();
            let event = Envelope::builder("order", "order-1", "OrderPlaced").build().unwrap();
            let topic = courier_core::Topic::new("orders").unwrap();
            store.enqueue(&Outbox::default(), &[Enqueue::new(&event).topic(&topic)]).await.unwrap();
            let id: i64 = match store.scan_pending(0, 10).await.unwrap().as_slice() {
                [(id, _)] => *id,
                other => panic!("one pending row expected, found {other:?}"),
            };
            let check = |owner: &str| OwnerCheck { owner: owner.into(), partition_count: 1 };

            store.write(&[], false, &[dead(id)], &check("old-owner")).await.unwrap();
            store.write(&[id], false, &[], &check("old-owner")).await.unwrap();
            let stats = store.stats().await.unwrap();
            assert_eq!((stats.pending, stats.dead, stats.published), (1, 0, 0), "{}", store.backend());

            store.write(&[id], false, &[], &check("new-owner")).await.unwrap();
            assert_eq!(store.stats().await.unwrap().published, 1, "{}", store.backend());
        })
        .await;
    }

    #[tokio::test]
    async fn a_secret_parameter_sqlx_would_log_is_refused_without_its_value() {
        let url = "postgres://app@127.0.0.1:1/app?sslmode=verify-full&sslpassword=hunter2";
        let error = Store::connect(url).await.unwrap_err().to_string();
        assert!(error.contains("`sslpassword`") && !error.contains("hunter2"), "{error}");
        assert!(refuse_secret_parameters("postgres://app@db/app?password=x&sslmode=require").is_ok());
    }

    #[tokio::test]
    async fn an_unsupported_url_is_named_without_its_password() {
        let error = Store::connect("redis://app:hunter2@cache:6379/0").await.unwrap_err().to_string();
        assert!(error.contains("redis://app:***@cache:6379/0"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
