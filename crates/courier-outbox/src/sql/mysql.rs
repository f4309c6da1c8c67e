//! MySQL 8 / MariaDB >= 10.6: `IN (...)` id lists, `ON DUPLICATE KEY`, and lease claims in a
//! transaction (MySQL cannot update a table it selects from in a subquery).

use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::MySql as Db;

use crate::sql::push_values as push_rows;

type DbPool = MySqlPool;
type DbConnection = sqlx::MySqlConnection;
type DbRow = MySqlRow;

const NOW_MS: &str = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)";

/// Inserts rows unless their key exists: `{INSERT_IGNORE} ... {ON_CONFLICT_IGNORE}`.
const INSERT_IGNORE: &str = "INSERT IGNORE";
const ON_CONFLICT_IGNORE: &str = "";

/// MariaDB answered `ORDER BY p.id DESC LIMIT 1` by walking the primary key down from the row
/// (20,000 rows read per claimed row once most of the outbox was published) instead of one step
/// on `(aggregate_id, status, id)`.
const PENDING_AGGREGATE_HINT: &str = " FORCE INDEX (courier_outbox_pending_aggregate)";

crate::sql::common_ops!();

/// Every row count is another statement text: too many to keep prepared.
const PREPARE_INSERT: bool = false;

/// An id list is a placeholder per id, so every list length is another statement text.
const PREPARE_ID_LISTS: bool = false;

fn push_ids(qb: &mut QueryBuilder<'_, Db>, ids: &[i64]) {
    crate::sql::push_in_list(qb, ids);
}

/// MySQL names the value: `Duplicate entry 'order-42' for key 'courier_outbox_idempotency_key'`.
fn duplicate_value(err: &dyn sqlx::error::DatabaseError) -> Option<String> {
    let message = err.message();
    let start = message.find("Duplicate entry '")? + "Duplicate entry '".len();
    let end = message.rfind("' for key")?;
    message.get(start..end).map(str::to_owned)
}

pub(crate) async fn migrate(pool: &DbPool) -> Result<(), OutboxError> {
    let mut migrator = sqlx::migrate!("migrations/mysql");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

fn upsert_member_sql() -> String {
    format!(
        "INSERT INTO courier_outbox_relays (member, expires_at_ms) VALUES (?, {NOW_MS} + ?) \
         ON DUPLICATE KEY UPDATE expires_at_ms = VALUES(expires_at_ms)"
    )
}

/// Leases up to `want` free or expired partitions; SKIP LOCKED lets relays that acquire at the
/// same moment take different partitions instead of queueing behind each other.
pub(crate) async fn acquire(pool: &DbPool, owner: &str, want: i64, ttl_ms: i64) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let sql = format!(
        "SELECT partition_no FROM courier_outbox_leases WHERE owner IS NULL OR lease_until_ms < {NOW_MS} \
         ORDER BY partition_no LIMIT ? FOR UPDATE SKIP LOCKED"
    );
    let free: Vec<i64> = sqlx::query_scalar(&sql).bind(want).fetch_all(&mut *tx).await?;
    if !free.is_empty() {
        let mut qb = QueryBuilder::<Db>::new("UPDATE courier_outbox_leases SET owner = ");
        qb.push_bind(owner.to_owned()).push(", lease_until_ms = ").push(NOW_MS).push(" + ").push_bind(ttl_ms);
        qb.push(" WHERE partition_no");
        push_ids(&mut qb, &free);
        qb.build().persistent(false).execute(&mut *tx).await?;
    }
    tx.commit().await
}

pub(crate) async fn purge_published(pool: &DbPool, before_us: i64, chunk: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM courier_outbox WHERE status = 'published' AND published_at_us < ? ORDER BY id LIMIT ?",
    )
    .bind(before_us)
    .bind(chunk)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
