//! SQLite: one writer at a time, so a lease claim is a single conditional UPDATE.

use std::future::Future;

use sqlx::migrate::Migrator;
use sqlx::query::Query;
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::row::NewRow;
use crate::sql::queries::Queries;
use crate::sql::{push_in_list, push_values, Dialect, OutboxConnection};
use crate::OutboxError;

impl Dialect for Sqlite {
    const BACKEND: &'static str = "sqlite";
    const NOW_MS: &'static str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
    const INSERT_IGNORE: &'static str = "INSERT OR IGNORE";
    const ON_CONFLICT_IGNORE: &'static str = "";
    /// The planner finds the partial pending-aggregate index by itself.
    const PENDING_AGGREGATE_HINT: &'static str = "";
    /// Every row count is another statement text: too many to keep prepared.
    const PREPARE_INSERT: bool = false;
    /// An id list is a placeholder per id, so every list length is another statement text.
    const PREPARE_ID_LISTS: bool = false;
    /// Writers are serialised anyway; SQLite has no row locks.
    const SKIP_LOCKED: &'static str = "";
    const ANALYZE: &'static str = "ANALYZE courier_outbox";

    fn build<'q, 'a: 'q>(qb: &'q mut QueryBuilder<'a, Self>) -> Query<'q, Self, Self::Arguments<'q>> {
        qb.build()
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    fn migrator() -> Migrator {
        sqlx::migrate!("migrations/sqlite")
    }

    fn push_ids(qb: &mut QueryBuilder<'_, Self>, ids: &[i64]) {
        push_in_list(qb, ids);
    }

    fn push_rows(qb: &mut QueryBuilder<'_, Self>, rows: Vec<NewRow>) {
        push_values(qb, rows);
    }

    fn upsert_member_sql() -> String {
        format!(
            "INSERT INTO courier_outbox_relays (member, expires_at_ms) VALUES (?1, {} + ?2) \
             ON CONFLICT (member) DO UPDATE SET expires_at_ms = excluded.expires_at_ms",
            Self::NOW_MS
        )
    }

    /// SQLite names only the column (`UNIQUE constraint failed: courier_outbox.idempotency_key`).
    fn duplicate_value(_: &dyn sqlx::error::DatabaseError) -> Option<String> {
        None
    }

    async fn acquire(pool: &SqlitePool, owner: &str, want: i64, ttl_ms: i64) -> Result<(), sqlx::Error> {
        let sql = format!(
            "UPDATE courier_outbox_leases SET owner = ?1, lease_until_ms = {now} + ?2 \
             WHERE partition_no IN (SELECT partition_no FROM courier_outbox_leases \
               WHERE owner IS NULL OR lease_until_ms < {now} ORDER BY partition_no LIMIT ?3)",
            now = Self::NOW_MS
        );
        sqlx::query(&sql).bind(owner).bind(ttl_ms).bind(want).execute(pool).await?;
        Ok(())
    }

    async fn purge_published(pool: &SqlitePool, before_us: i64, chunk: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM courier_outbox WHERE id IN (SELECT id FROM courier_outbox \
             WHERE status = 'published' AND published_at_us < ?1 ORDER BY id LIMIT ?2)",
        )
        .bind(before_us)
        .bind(chunk)
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// SQLite keeps its pool: it has one writer anyway, and an in-memory database exists only
    /// there.
    fn relay_pool(pool: &SqlitePool, _connections: u32) -> SqlitePool {
        pool.clone()
    }
}

impl crate::sql::sealed::Sealed for SqliteConnection {}

impl OutboxConnection for SqliteConnection {
    fn insert(&mut self, rows: Vec<NewRow>) -> impl Future<Output = Result<(), OutboxError>> + Send + '_ {
        Queries::<Sqlite>::insert(self, rows)
    }
}
