//! The inbox's statements ([`crate::Inbox`]): the insert that records a processed event, shared,
//! and the retention purge, whose chunked DELETE each database writes its own way.

use sqlx::{Encode, Executor, IntoArguments, Pool, QueryBuilder, Type};

use crate::sql::Dialect;

/// What differs between the databases for the inbox.
pub(crate) trait InboxDialect: Dialect {
    /// Deletes up to a chunk of inbox rows processed before a time; binds the time in
    /// microseconds, then the chunk size. Each walks the `processed_at_us` index.
    const PURGE_INBOX: &'static str;
}

#[cfg(feature = "postgres")]
impl InboxDialect for sqlx::Postgres {
    const PURGE_INBOX: &'static str = "DELETE FROM courier_inbox WHERE (consumer, event_id) IN \
         (SELECT consumer, event_id FROM courier_inbox WHERE processed_at_us < $1 LIMIT $2)";
}

/// MySQL cannot `LIMIT` an `IN` subquery, but deletes with `ORDER BY … LIMIT` itself.
#[cfg(feature = "mysql")]
impl InboxDialect for sqlx::MySql {
    const PURGE_INBOX: &'static str =
        "DELETE FROM courier_inbox WHERE processed_at_us < ? ORDER BY processed_at_us LIMIT ?";
}

#[cfg(feature = "sqlite")]
impl InboxDialect for sqlx::Sqlite {
    const PURGE_INBOX: &'static str = "DELETE FROM courier_inbox WHERE rowid IN \
         (SELECT rowid FROM courier_inbox WHERE processed_at_us < ?1 LIMIT ?2)";
}

/// Inserts `(consumer, event_id)` unless present, on the caller's connection (its transaction);
/// returns whether this call inserted it. A row another transaction inserted and has not yet
/// committed makes the insert wait for that transaction's outcome (PostgreSQL, MySQL; SQLite
/// has one writer at a time anyway): the unique key decides, never a read before the write.
pub(crate) async fn record<D>(
    conn: &mut D::Connection,
    consumer: &str,
    event_id: String,
    processed_at_us: i64,
) -> Result<bool, sqlx::Error>
where
    D: Dialect,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'q> String: Encode<'q, D> + Type<D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
{
    let mut qb = QueryBuilder::<D>::new(D::INSERT_IGNORE);
    qb.push(" INTO courier_inbox (consumer, event_id, processed_at_us) VALUES (")
        .push_bind(consumer.to_owned())
        .push(", ")
        .push_bind(event_id)
        .push(", ")
        .push_bind(processed_at_us)
        .push(")")
        .push(D::ON_CONFLICT_IGNORE);
    let done = D::build(&mut qb).execute(conn).await?;
    Ok(D::rows_affected(&done) == 1)
}

/// Deletes up to `chunk` inbox rows processed before `before_us`; returns how many.
pub(crate) async fn purge<D>(pool: &Pool<D>, before_us: i64, chunk: i64) -> Result<u64, sqlx::Error>
where
    D: InboxDialect,
    for<'c> &'c Pool<D>: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
{
    let done = sqlx::query(D::PURGE_INBOX).bind(before_us).bind(chunk).execute(pool).await?;
    Ok(D::rows_affected(&done))
}
