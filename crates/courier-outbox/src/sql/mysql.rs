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
    /// Milliseconds from the epoch to the statement's start in UTC, by date arithmetic alone.
    /// `UNIX_TIMESTAMP(NOW(3))` would convert the session's local time back to UTC: in a
    /// session time zone with daylight saving time, that is an hour off while the clocks repeat
    /// an hour, so leases would jump.
    const NOW_MS: &'static str =
        "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000)";
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

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use sqlx::Connection as _;

    use super::*;

    /// Runs `NOW_MS` on `conn` after `settings` (a `SET` list).
    async fn now_ms(conn: &mut MySqlConnection, settings: &str) -> i64 {
        sqlx::raw_sql(&format!("SET {settings}")).execute(&mut *conn).await.unwrap_or_else(|e| {
            panic!("SET {settings}: {e} (named time zones are loaded by scripts/services.sh)")
        });
        sqlx::query_scalar(&format!("SELECT {}", MySql::NOW_MS)).fetch_one(&mut *conn).await.unwrap()
    }

    fn system_ms() -> i64 {
        i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
    }

    /// The lease clock is the epoch in milliseconds whatever the session's time zone, also while
    /// a zone's clocks repeat an hour (leases would otherwise jump an hour back, then forward).
    #[tokio::test]
    async fn lease_clock_ignores_the_session_time_zone() {
        let url = "mysql://root@127.0.0.1:3306/test";
        let mut conn = MySqlConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("MariaDB at {url} is required (scripts/services.sh): {e}"));
        // Europe/Berlin's clocks went from 03:00 CEST back to 02:00 CET at 2026-10-25 01:00 UTC:
        // 02:30 local is both 00:30 and 01:30 UTC. Spring forward skipped 02:00-03:00 on
        // 2026-03-29 (01:30 UTC is 03:30 CEST).
        let instants = [
            ("first 02:30 of 2026-10-25", 1_792_888_200_250_i64),
            ("second 02:30 of 2026-10-25", 1_792_891_800_250),
            ("2026-03-29 03:30 CEST", 1_774_747_800_500),
        ];
        for zone in ["+00:00", "+05:00", "-09:30", "Europe/Berlin", "America/New_York"] {
            for (what, ms) in instants {
                let pinned = format!("time_zone = '{zone}', timestamp = {}.{:03}", ms / 1000, ms % 1000);
                assert_eq!(now_ms(&mut conn, &pinned).await, ms, "{what} in a session in {zone}");
            }
            let before = system_ms();
            let now = now_ms(&mut conn, &format!("time_zone = '{zone}', timestamp = DEFAULT")).await;
            let after = system_ms();
            assert!(
                (before - 1000..=after + 1000).contains(&now),
                "in {zone} the database clock says {now} ms, the system clock {before}..{after} ms"
            );
        }
        conn.close().await.unwrap();
    }
}
