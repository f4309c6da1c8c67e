//! Everything that talks SQL. The statements all databases share are written once, generic over
//! the database, in [`queries`]; what differs (placeholders of id lists, the clock, index hints,
//! lease claims, which statements are prepared) is a [`Dialect`], implemented in one module per
//! database (`postgres.rs`, `mysql.rs`, `sqlite.rs`).

use std::future::Future;

use sqlx::migrate::Migrator;
use sqlx::query::Query;
use sqlx::{Pool, QueryBuilder};

use crate::row::NewRow;
use crate::OutboxError;

pub(crate) mod inbox;
#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod queries;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// A connection to a database the outbox supports: [`sqlx::PgConnection`],
/// [`sqlx::MySqlConnection`] or [`sqlx::SqliteConnection`], each behind its cargo feature, or a
/// [`StoreTransaction`](crate::StoreTransaction). A sqlx transaction dereferences to its
/// connection, so [`Outbox::enqueue`](crate::Outbox::enqueue) joins the caller's transaction
/// when given `&mut *tx`.
pub trait OutboxConnection: Send + sealed::Sealed {
    #[doc(hidden)]
    fn insert(&mut self, rows: Vec<NewRow>) -> impl Future<Output = Result<(), OutboxError>> + Send + '_;
}

pub(crate) mod sealed {
    /// Keeps [`OutboxConnection`](super::OutboxConnection) to the connections this crate knows.
    pub trait Sealed {}
}

/// What differs between the databases; [`queries::Queries`] holds the statements they share.
/// Statements are built with [`sqlx::QueryBuilder`], which writes each database's placeholders.
pub(crate) trait Dialect: sqlx::Database + sqlx::database::HasStatementCache {
    /// Short database name for logs and metrics.
    const BACKEND: &'static str;
    /// SQL for the database clock in milliseconds.
    const NOW_MS: &'static str;
    /// Inserts rows unless their key exists: `{INSERT_IGNORE} ... {ON_CONFLICT_IGNORE}`.
    const INSERT_IGNORE: &'static str;
    /// See [`INSERT_IGNORE`](Self::INSERT_IGNORE).
    const ON_CONFLICT_IGNORE: &'static str;
    /// How the claim's subquery reaches the pending-aggregate index: an index hint, or empty.
    const PENDING_AGGREGATE_HINT: &'static str;
    /// Whether enqueue's INSERT is prepared and kept per connection.
    const PREPARE_INSERT: bool;
    /// Whether statements holding an id list (the relay's fetch and mark) are prepared.
    const PREPARE_ID_LISTS: bool;
    /// The row lock of the benchmark baseline's claim, where the database has one.
    const SKIP_LOCKED: &'static str;
    /// Refreshes the planner statistics of the outbox table.
    const ANALYZE: &'static str;

    /// [`QueryBuilder::build`], with the arguments' lifetime shortened to the borrow of the
    /// builder, as sqlx's `execute` and `fetch` require. Only a concrete database shows the
    /// compiler that its arguments allow this (they are covariant); generic code cannot.
    fn build<'q, 'a: 'q>(qb: &'q mut QueryBuilder<'a, Self>) -> Query<'q, Self, Self::Arguments<'q>>;

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// This database's migrations.
    fn migrator() -> Migrator;

    /// Appends the condition that a column is one of `ids` (after the column name).
    fn push_ids(qb: &mut QueryBuilder<'_, Self>, ids: &[i64]);

    /// Appends enqueue's rows after [`INSERT_INTO`], in its columns' order.
    fn push_rows(qb: &mut QueryBuilder<'_, Self>, rows: Vec<NewRow>);

    /// Inserts or refreshes a relay in `courier_outbox_relays`; binds the member, then the TTL in
    /// milliseconds.
    fn upsert_member_sql() -> String;

    /// The claim's `previous_pending_id` column, reading `courier_outbox p`.
    fn previous_pending() -> String {
        crate::row::previous_pending(Self::PENDING_AGGREGATE_HINT)
    }

    /// The duplicate idempotency key a unique violation names, if the database names it.
    fn duplicate_value(err: &dyn sqlx::error::DatabaseError) -> Option<String>;

    /// Leases up to `want` free or expired partitions to `owner` for `ttl_ms`.
    fn acquire(
        pool: &Pool<Self>,
        owner: &str,
        want: i64,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Deletes up to `chunk` published rows older than `before_us`; returns how many.
    fn purge_published(
        pool: &Pool<Self>,
        before_us: i64,
        chunk: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// A new pool of at most `connections` to the database of `pool`, for a relay; see
    /// [`Store::dedicated`](crate::Store::dedicated).
    fn relay_pool(pool: &Pool<Self>, connections: u32) -> Pool<Self>;
}

/// A row the relay wrote back after a failed publish.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) id: i64,
    pub(crate) attempts: i64,
    pub(crate) dead: bool,
    pub(crate) next_attempt_at_us: Option<i64>,
    pub(crate) error: String,
}

/// What the mark does to acknowledged rows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mark {
    /// Keep them as `published` until the retention purge deletes them.
    Keep { published_at_us: i64 },
    /// Delete them in the mark itself (retention zero): far less write work than an update,
    /// which copies the whole row and its index entries.
    Delete,
}

/// A row that blocks its aggregate: dead, or pending with a retry scheduled.
#[derive(Debug, Clone)]
pub(crate) struct BlockedRow {
    pub(crate) id: i64,
    pub(crate) aggregate_id: String,
    pub(crate) dead: bool,
    pub(crate) next_attempt_at_us: Option<i64>,
}

/// The rows a relay fetches after a scan: those in its partitions it does not hold yet.
#[derive(Debug, Clone)]
pub(crate) struct ClaimQuery {
    pub(crate) ids: Vec<i64>,
    pub(crate) owner: OwnerCheck,
}

/// The lease check on every row the relay reads or writes: the database must still show the
/// row's partition (`shard % partition_count`) leased to `owner`, unexpired. A relay that lost a
/// lease (its renewals failed, another relay took the partition) then neither claims nor changes
/// rows of that partition, whatever it still had in memory or in flight to the database.
#[derive(Debug, Clone)]
pub(crate) struct OwnerCheck {
    pub(crate) owner: String,
    pub(crate) partition_count: i64,
}

/// Writes ` IN (?, ?, …)` for `ids`: the id-list form of MySQL and SQLite (PostgreSQL binds
/// one array instead).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn push_in_list<DB>(qb: &mut sqlx::QueryBuilder<'_, DB>, ids: &[i64])
where
    DB: sqlx::Database,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    qb.push(" IN (");
    let mut list = qb.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    qb.push(")");
}

/// The start of enqueue's INSERT; each database appends the rows in these columns' order.
pub(crate) const INSERT_INTO: &str =
    "INSERT INTO courier_outbox (event_id, topic, aggregate_type, aggregate_id, \
     shard, event_type, event_version, payload, headers, traceparent, tracestate, correlation_id, tenant, \
     occurred_at_us, created_at_us, idempotency_key) ";

/// Appends `VALUES (…), (…)` with a placeholder per column of each row: the insert form of
/// MySQL and SQLite, a new statement text per row count (PostgreSQL binds arrays instead).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn push_values<DB>(qb: &mut sqlx::QueryBuilder<'_, DB>, rows: Vec<NewRow>)
where
    DB: sqlx::Database,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    qb.push_values(rows, |mut b, r| {
        b.push_bind(r.event_id)
            .push_bind(r.topic)
            .push_bind(r.aggregate_type)
            .push_bind(r.aggregate_id)
            .push_bind(r.shard)
            .push_bind(r.event_type)
            .push_bind(r.event_version)
            .push_bind(r.payload)
            .push_bind(r.headers)
            .push_bind(r.traceparent)
            .push_bind(r.tracestate)
            .push_bind(r.correlation_id)
            .push_bind(r.tenant)
            .push_bind(r.occurred_at_us)
            .push_bind(r.created_at_us)
            .push_bind(r.idempotency_key);
    });
}

/// Longest error text stored in `last_error`.
pub(crate) const MAX_ERROR_LEN: usize = 2000;

/// Rows per INSERT statement, well below every database's bind-parameter limit.
pub(crate) const INSERT_CHUNK: usize = 1000;

/// Turns a unique violation on the idempotency key into [`OutboxError::DuplicateKey`], naming
/// the key: the one the database reports (`extract`), else the only key in the statement.
pub(crate) fn duplicate_key(
    err: sqlx::Error,
    keys: &[String],
    extract: fn(&dyn sqlx::error::DatabaseError) -> Option<String>,
) -> OutboxError {
    let Some(db) = err.as_database_error() else { return err.into() };
    let text = format!("{} {}", db.message(), db.constraint().unwrap_or_default());
    if !db.is_unique_violation() || !text.contains("idempotency") {
        return err.into();
    }
    let key = extract(db)
        .or_else(|| match keys {
            [only] => Some(only.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("one of {keys:?}"));
    OutboxError::DuplicateKey { key }
}
