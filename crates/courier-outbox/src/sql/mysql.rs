//! MySQL 8 / MariaDB >= 10.6: `IN (...)` id lists, `ON DUPLICATE KEY`, and lease claims in a
//! transaction (MySQL cannot update a table it selects from in a subquery).

use std::future::Future;

use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::query::Query;
use sqlx::{MySql, MySqlConnection, QueryBuilder};

use crate::row::NewRow;
use crate::sql::queries::Queries;
use crate::sql::{push_in_list, push_values, Dialect, OutboxConnection};
use crate::OutboxError;

impl Dialect for MySql {
    const BACKEND: &'static str = "mysql";
    const NOW_MS: &'static str = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)";
    const INSERT_IGNORE: &'static str = "INSERT IGNORE";
    const ON_CONFLICT_IGNORE: &'static str = "";
    /// Without the hint MariaDB may answer `ORDER BY p.id DESC LIMIT 1` by walking the primary
    /// key down from the row, through every published row, instead of one step on
    /// `(aggregate_id, status, id)`.
    const PENDING_AGGREGATE_HINT: &'static str = " FORCE INDEX (courier_outbox_pending_aggregate)";
    /// Every row count is another statement text: too many to keep prepared.
    const PREPARE_INSERT: bool = false;
    /// An id list is a placeholder per id, so every list length is another statement text.
    const PREPARE_ID_LISTS: bool = false;
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const ANALYZE: &'static str = "ANALYZE TABLE courier_outbox";

    fn build<'q, 'a: 'q>(qb: &'q mut QueryBuilder<'a, Self>) -> Query<'q, Self, Self::Arguments<'q>> {
        qb.build()
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    fn migrator() -> Migrator {
        sqlx::migrate!("migrations/mysql")
    }

    fn push_ids(qb: &mut QueryBuilder<'_, Self>, ids: &[i64]) {
        push_in_list(qb, ids);
    }

    fn push_rows(qb: &mut QueryBuilder<'_, Self>, rows: Vec<NewRow>) {
        push_values(qb, rows);
    }

    fn upsert_member_sql() -> String {
        format!(
            "INSERT INTO courier_outbox_relays (member, expires_at_ms) VALUES (?, {} + ?) \
             ON DUPLICATE KEY UPDATE expires_at_ms = VALUES(expires_at_ms)",
            Self::NOW_MS
        )
    }

    /// MySQL names the value: `Duplicate entry 'order-42' for key 'courier_outbox_idempotency_key'`.
    fn duplicate_value(err: &dyn sqlx::error::DatabaseError) -> Option<String> {
        let message = err.message();
        let start = message.find("Duplicate entry '")? + "Duplicate entry '".len();
        let end = message.rfind("' for key")?;
        message.get(start..end).map(str::to_owned)
    }

    /// SKIP LOCKED lets relays that acquire at the same moment take different partitions
    /// instead of queueing behind each other.
    async fn acquire(pool: &MySqlPool, owner: &str, want: i64, ttl_ms: i64) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        let sql = format!(
            "SELECT partition_no FROM courier_outbox_leases WHERE owner IS NULL OR lease_until_ms < {} \
             ORDER BY partition_no LIMIT ? FOR UPDATE SKIP LOCKED",
            Self::NOW_MS
        );
        let free: Vec<i64> = sqlx::query_scalar(&sql).bind(want).fetch_all(&mut *tx).await?;
        if !free.is_empty() {
            let mut qb = QueryBuilder::<MySql>::new("UPDATE courier_outbox_leases SET owner = ");
            qb.push_bind(owner.to_owned())
                .push(", lease_until_ms = ")
                .push(Self::NOW_MS)
                .push(" + ")
                .push_bind(ttl_ms);
            qb.push(" WHERE partition_no");
            Self::push_ids(&mut qb, &free);
            qb.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    async fn purge_published(pool: &MySqlPool, before_us: i64, chunk: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM courier_outbox WHERE status = 'published' AND published_at_us < ? ORDER BY id LIMIT ?",
        )
        .bind(before_us)
        .bind(chunk)
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }

    fn relay_pool(pool: &MySqlPool, connections: u32) -> MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(connections)
            .test_before_acquire(false)
            .connect_lazy_with(pool.connect_options().as_ref().clone())
    }
}

impl crate::sql::sealed::Sealed for MySqlConnection {}

impl OutboxConnection for MySqlConnection {
    fn insert(&mut self, rows: Vec<NewRow>) -> impl Future<Output = Result<(), OutboxError>> + Send + '_ {
        Queries::<MySql>::insert(self, rows)
    }
}
