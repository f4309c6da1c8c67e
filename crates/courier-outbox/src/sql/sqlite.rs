//! SQLite: one writer at a time, so a lease claim is a single conditional UPDATE.

use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::Sqlite as Db;

use crate::sql::push_values as push_rows;

type DbPool = SqlitePool;
type DbConnection = sqlx::SqliteConnection;
type DbRow = SqliteRow;

const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// Inserts rows unless their key exists: `{INSERT_IGNORE} ... {ON_CONFLICT_IGNORE}`.
const INSERT_IGNORE: &str = "INSERT OR IGNORE";
const ON_CONFLICT_IGNORE: &str = "";

/// The planner finds the partial pending-aggregate index by itself.
const PENDING_AGGREGATE_HINT: &str = "";

crate::sql::common_ops!();

/// Every row count is another statement text: too many to keep prepared.
const PREPARE_INSERT: bool = false;

/// An id list is a placeholder per id, so every list length is another statement text.
const PREPARE_ID_LISTS: bool = false;

fn push_ids(qb: &mut QueryBuilder<'_, Db>, ids: &[i64]) {
    crate::sql::push_in_list(qb, ids);
}

/// SQLite names only the column (`UNIQUE constraint failed: courier_outbox.idempotency_key`).
fn duplicate_value(_: &dyn sqlx::error::DatabaseError) -> Option<String> {
    None
}

pub(crate) async fn migrate(pool: &DbPool) -> Result<(), OutboxError> {
    let mut migrator = sqlx::migrate!("migrations/sqlite");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

fn upsert_member_sql() -> String {
    format!(
        "INSERT INTO courier_outbox_relays (member, expires_at_ms) VALUES (?1, {NOW_MS} + ?2) \
         ON CONFLICT (member) DO UPDATE SET expires_at_ms = excluded.expires_at_ms"
    )
}

pub(crate) async fn acquire(pool: &DbPool, owner: &str, want: i64, ttl_ms: i64) -> Result<(), sqlx::Error> {
    let sql = format!(
        "UPDATE courier_outbox_leases SET owner = ?1, lease_until_ms = {NOW_MS} + ?2 \
         WHERE partition_no IN (SELECT partition_no FROM courier_outbox_leases \
           WHERE owner IS NULL OR lease_until_ms < {NOW_MS} ORDER BY partition_no LIMIT ?3)"
    );
    sqlx::query(&sql).bind(owner).bind(ttl_ms).bind(want).execute(pool).await?;
    Ok(())
}

pub(crate) async fn purge_published(pool: &DbPool, before_us: i64, chunk: i64) -> Result<u64, sqlx::Error> {
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
