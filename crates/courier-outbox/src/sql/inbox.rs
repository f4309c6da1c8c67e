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
/// MySQL's `INSERT IGNORE` would also turn a value too long for its column into a warning and a
/// truncated row; [`crate::Inbox`] validates the consumer name, and event ids have a fixed length.
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

#[cfg(all(test, feature = "postgres", feature = "mysql"))]
mod tests {
    use sqlx::{Connection as _, Row as _};

    use super::*;
    use crate::sql::queries::Queries;

    /// Rows in the inbox of the plan tests; the purge's cut-off selects the oldest hundred.
    const ROWS: u32 = 20_000;

    /// The purge statement with literal arguments ($n on PostgreSQL, ? on MySQL): the hundred
    /// oldest rows, in one chunk.
    fn purge_sql<D: InboxDialect>() -> String {
        D::PURGE_INBOX
            .replace("$1", "100")
            .replace("$2", "5000")
            .replacen('?', "100", 1)
            .replacen('?', "5000", 1)
    }

    /// The purge finds old rows through the processed-at index: a scan of the whole inbox would
    /// grow with every event the consumer ever kept.
    #[tokio::test]
    async fn the_purge_walks_the_processed_at_index_on_postgres() {
        let server = "postgres://postgres@127.0.0.1:5432";
        let name = format!("courier_inbox_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&format!("{server}/test"))
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {server} is required (scripts/services.sh): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let pool = sqlx::PgPool::connect(&format!("{server}/{name}")).await.unwrap();
        Queries::<sqlx::Postgres>::migrate(&pool).await.unwrap();
        sqlx::query(&format!(
            "INSERT INTO courier_inbox SELECT 'billing', g::text, g FROM generate_series(1, {ROWS}) g"
        ))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("ANALYZE courier_inbox").execute(&pool).await.unwrap();
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", purge_sql::<sqlx::Postgres>()))
            .fetch_all(&pool)
            .await
            .unwrap();
        let plan = plan.join("\n");
        pool.close().await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
        assert!(plan.contains("courier_inbox_processed_at"), "the purge misses its index:\n{plan}");
    }

    #[tokio::test]
    async fn the_purge_walks_the_processed_at_index_on_mariadb() {
        let server = "mysql://root@127.0.0.1:3306";
        let name = format!("courier_inbox_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::MySqlConnection::connect(&format!("{server}/test"))
            .await
            .unwrap_or_else(|e| panic!("MariaDB at {server} is required (scripts/services.sh): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let pool = sqlx::MySqlPool::connect(&format!("{server}/{name}")).await.unwrap();
        Queries::<sqlx::MySql>::migrate(&pool).await.unwrap();
        // MariaDB's sequence engine: seq_1_to_N is a table of the numbers 1 to N.
        sqlx::query(&format!("INSERT INTO courier_inbox SELECT 'billing', seq, seq FROM seq_1_to_{ROWS}"))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("ANALYZE TABLE courier_inbox").fetch_all(&pool).await.unwrap();
        let plan =
            sqlx::query(&format!("EXPLAIN {}", purge_sql::<sqlx::MySql>())).fetch_one(&pool).await.unwrap();
        let key: Option<String> = plan.try_get_unchecked("key").unwrap();
        pool.close().await;
        sqlx::query(&format!("DROP DATABASE {name}")).execute(&mut admin).await.unwrap();
        assert_eq!(key.as_deref(), Some("courier_inbox_processed_at"), "the purge misses its index");
    }
}
