//! Everything that talks SQL. Each database has one module holding the statements that differ
//! (`postgres.rs`, `mysql.rs`, `sqlite.rs`); the statements all three share are written once in
//! [`common_ops!`] and expanded into each module with that module's `Db` types.

use std::future::Future;

use crate::row::NewRow;
use crate::OutboxError;

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// A connection to a database the outbox supports: [`sqlx::PgConnection`],
/// [`sqlx::MySqlConnection`] or [`sqlx::SqliteConnection`], each behind its cargo feature. A
/// transaction dereferences to its connection, so [`Outbox::enqueue`](crate::Outbox::enqueue)
/// joins the caller's transaction when given `&mut *tx`.
pub trait OutboxConnection: Send + sealed::Sealed {
    #[doc(hidden)]
    fn insert(&mut self, rows: Vec<NewRow>) -> impl Future<Output = Result<(), OutboxError>> + Send + '_;
}

mod sealed {
    pub trait Sealed {}
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

/// The rows a relay fetches after a scan: those in its partitions it does not hold yet. The
/// database must still show their partitions as leased by `owner`.
#[derive(Debug, Clone)]
pub(crate) struct ClaimQuery {
    pub(crate) ids: Vec<i64>,
    pub(crate) partition_count: i64,
    pub(crate) owner: String,
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

/// Expands, inside a database module that defines `Db`, `DbPool`, `DbRow`, `DbConnection`, `NOW_MS` (SQL for
/// the database clock in milliseconds), `push_ids` and `PREPARE_ID_LISTS` (an `IN`-style id list
/// and whether statements holding one are prepared), `push_rows` and
/// `PREPARE_INSERT` (enqueue's rows), `INSERT_IGNORE` /
/// `ON_CONFLICT_IGNORE`, `upsert_member_sql`, `duplicate_value` and `PENDING_AGGREGATE_HINT` (how
/// the claim's subquery reaches the pending-aggregate index), the operations
/// whose SQL is the same on every database. Statements are built with [`sqlx::QueryBuilder`],
/// which writes each database's placeholders.
macro_rules! common_ops {
    () => {
        use sqlx::{QueryBuilder, Row as _};

        use crate::admin::{DeadEvent, DeadFilter};
        use crate::row::{previous_pending, ClaimedRow, NewRow, RawRow, CLAIM_COLUMNS, DEAD, PENDING, PUBLISHED};
        use crate::sql::{BlockedRow, ClaimQuery, Failure, Mark, INSERT_CHUNK};
        use crate::OutboxError;

        impl crate::sql::sealed::Sealed for DbConnection {}

        impl crate::sql::OutboxConnection for DbConnection {
            fn insert(
                &mut self,
                rows: Vec<NewRow>,
            ) -> impl std::future::Future<Output = Result<(), OutboxError>> + Send + '_ {
                async move {
                    // One statement per chunk keeps the caller's transaction to few round trips.
                    if rows.len() > INSERT_CHUNK {
                        return Err(OutboxError::Config(format!(
                            "at most {INSERT_CHUNK} events per enqueue_batch call, got {}",
                            rows.len()
                        )));
                    }
                    let mut qb = QueryBuilder::<Db>::new(crate::sql::INSERT_INTO);
                    let keys: Vec<String> = rows.iter().filter_map(|r| r.idempotency_key.clone()).collect();
                    push_rows(&mut qb, rows);
                    match qb.build().persistent(PREPARE_INSERT).execute(&mut *self).await {
                        Ok(_) => Ok(()),
                        Err(err) => Err(crate::sql::duplicate_key(err, &keys, duplicate_value)),
                    }
                }
            }
        }

        /// Step 1 of a claim: `(id, shard)` of the next pending rows in id order. No filter but
        /// the index predicate, so every database walks the pending index and stops at the limit.
        pub(crate) async fn scan_pending(
            pool: &DbPool,
            after_id: i64,
            limit: i64,
        ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
            let rows = scan_pending_query(after_id, limit).build().fetch_all(pool).await?;
            rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
        }

        fn scan_pending_query(after_id: i64, limit: i64) -> QueryBuilder<'static, Db> {
            let mut qb = QueryBuilder::<Db>::new(
                "SELECT id, shard FROM courier_outbox WHERE status = 'pending' AND id > ",
            );
            qb.push_bind(after_id).push(" ORDER BY id LIMIT ").push_bind(limit);
            qb
        }

        /// Step 2 of a claim: the chosen rows, if still pending and in a partition the database
        /// shows leased to `q.owner` (the fence against a lease lost in the meantime).
        pub(crate) async fn fetch_claimed(pool: &DbPool, q: &ClaimQuery) -> Result<Vec<ClaimedRow>, sqlx::Error> {
            let rows = fetch_claimed_query(q).build().persistent(PREPARE_ID_LISTS).fetch_all(pool).await?;
            rows.iter().map(|row| decode_claimed(row).map(RawRow::into_claimed)).collect()
        }

        fn fetch_claimed_query(q: &ClaimQuery) -> QueryBuilder<'static, Db> {
            let mut qb = QueryBuilder::<Db>::new("SELECT ");
            qb.push(CLAIM_COLUMNS).push(", ").push(previous_pending(PENDING_AGGREGATE_HINT));
            // The status is a parameter (here and in the mark): see `PREPARE_ID_LISTS`.
            qb.push(" FROM courier_outbox o WHERE o.status = ").push_bind(PENDING).push(" AND o.id");
            push_ids(&mut qb, &q.ids);
            qb.push(" AND EXISTS (SELECT 1 FROM courier_outbox_leases l WHERE l.partition_no = o.shard % ")
                .push_bind(q.partition_count)
                .push(" AND l.owner = ")
                .push_bind(q.owner.clone())
                .push(" AND l.lease_until_ms > ")
                .push(NOW_MS)
                .push(") ORDER BY o.id");
            qb
        }

        /// Reads the columns by position, in `CLAIM_COLUMNS` order (a lookup by name hashes the
        /// name, for every column of every row the relay reads).
        fn decode_claimed(row: &DbRow) -> Result<RawRow, sqlx::Error> {
            Ok(RawRow {
                id: row.try_get(0)?,
                event_id: row.try_get(1)?,
                topic: row.try_get(2)?,
                aggregate_type: row.try_get(3)?,
                aggregate_id: row.try_get(4)?,
                shard: row.try_get(5)?,
                event_type: row.try_get(6)?,
                event_version: row.try_get(7)?,
                payload: row.try_get(8)?,
                headers: row.try_get(9)?,
                traceparent: row.try_get(10)?,
                tracestate: row.try_get(11)?,
                correlation_id: row.try_get(12)?,
                tenant: row.try_get(13)?,
                occurred_at_us: row.try_get(14)?,
                created_at_us: row.try_get(15)?,
                attempts: row.try_get(16)?,
                previous_pending_id: row.try_get(17)?,
            })
        }

        /// Marks acknowledged rows published or deletes them (one statement), and records
        /// failed attempts.
        pub(crate) async fn write(
            pool: &DbPool,
            published: &[i64],
            mark: Mark,
            failures: &[Failure],
        ) -> Result<(), sqlx::Error> {
            if !published.is_empty() {
                mark_query(published, mark).build().persistent(PREPARE_ID_LISTS).execute(pool).await?;
            }
            for f in failures {
                let mut qb = QueryBuilder::<Db>::new("UPDATE courier_outbox SET status = ");
                qb.push_bind(if f.dead { DEAD } else { PENDING })
                    .push(", attempts = ")
                    .push_bind(f.attempts)
                    .push(", next_attempt_at_us = ")
                    .push_bind(f.next_attempt_at_us)
                    .push(", last_error = ")
                    .push_bind(f.error.clone())
                    .push(" WHERE status = ")
                    .push_bind(PENDING)
                    .push(" AND id = ")
                    .push_bind(f.id);
                qb.build().execute(pool).await?;
            }
            Ok(())
        }

        fn mark_query(published: &[i64], mark: Mark) -> QueryBuilder<'static, Db> {
            let mut qb = match mark {
                Mark::Keep { published_at_us } => {
                    let mut qb = QueryBuilder::<Db>::new("UPDATE courier_outbox SET status = ");
                    qb.push_bind(PUBLISHED).push(", published_at_us = ").push_bind(published_at_us);
                    qb
                }
                Mark::Delete => QueryBuilder::<Db>::new("DELETE FROM courier_outbox"),
            };
            qb.push(" WHERE status = ").push_bind(PENDING).push(" AND id");
            push_ids(&mut qb, published);
            qb
        }

        pub(crate) async fn blocked(
            pool: &DbPool,
            partitions: &[i64],
            partition_count: i64,
        ) -> Result<Vec<BlockedRow>, sqlx::Error> {
            let mut qb = QueryBuilder::<Db>::new(
                "SELECT id, aggregate_id, status, next_attempt_at_us FROM courier_outbox \
                 WHERE (status = 'dead' OR (status = 'pending' AND attempts > 0)) AND shard % ",
            );
            qb.push_bind(partition_count);
            push_ids(&mut qb, partitions);
            qb.push(" ORDER BY id");
            let rows = qb.build().persistent(false).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    Ok(BlockedRow {
                        id: row.try_get("id")?,
                        aggregate_id: row.try_get("aggregate_id")?,
                        dead: row.try_get::<String, _>("status")? == DEAD,
                        next_attempt_at_us: row.try_get("next_attempt_at_us")?,
                    })
                })
                .collect()
        }

        /// Creates the lease rows `0..count` if missing and returns how many lease rows exist.
        pub(crate) async fn ensure_partitions(pool: &DbPool, count: i64) -> Result<i64, sqlx::Error> {
            let mut qb = QueryBuilder::<Db>::new(INSERT_IGNORE);
            qb.push(" INTO courier_outbox_leases (partition_no) ");
            qb.push_values(0..count, |mut b, p| {
                b.push_bind(p);
            });
            qb.push(ON_CONFLICT_IGNORE).build().persistent(false).execute(pool).await?;
            sqlx::query_scalar("SELECT COUNT(*) FROM courier_outbox_leases").fetch_one(pool).await
        }

        /// Records this relay as alive for `ttl_ms`, forgets relays gone for an hour, and returns
        /// how many relays are alive.
        pub(crate) async fn heartbeat(pool: &DbPool, member: &str, ttl_ms: i64) -> Result<i64, sqlx::Error> {
            sqlx::query(&upsert_member_sql()).bind(member).bind(ttl_ms).execute(pool).await?;
            let mut qb = QueryBuilder::<Db>::new("DELETE FROM courier_outbox_relays WHERE expires_at_ms < ");
            qb.push(NOW_MS).push(" - 3600000").build().execute(pool).await?;
            let mut qb =
                QueryBuilder::<Db>::new("SELECT COUNT(*) FROM courier_outbox_relays WHERE expires_at_ms > ");
            qb.push(NOW_MS);
            qb.build().fetch_one(pool).await?.try_get(0)
        }

        /// Extends this relay's leases and returns `(partition, version)` of those it holds.
        pub(crate) async fn renew(
            pool: &DbPool,
            owner: &str,
            ttl_ms: i64,
        ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
            let mut qb = QueryBuilder::<Db>::new("UPDATE courier_outbox_leases SET lease_until_ms = ");
            qb.push(NOW_MS).push(" + ").push_bind(ttl_ms).push(" WHERE owner = ").push_bind(owner.to_owned());
            qb.build().execute(pool).await?;
            let mut qb =
                QueryBuilder::<Db>::new("SELECT partition_no, version FROM courier_outbox_leases WHERE owner = ");
            qb.push_bind(owner.to_owned()).push(" AND lease_until_ms > ").push(NOW_MS).push(" ORDER BY partition_no");
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
        }

        pub(crate) async fn release(pool: &DbPool, owner: &str, partitions: &[i64]) -> Result<(), sqlx::Error> {
            let mut qb = QueryBuilder::<Db>::new(
                "UPDATE courier_outbox_leases SET owner = NULL, lease_until_ms = 0 WHERE owner = ",
            );
            qb.push_bind(owner.to_owned()).push(" AND partition_no");
            push_ids(&mut qb, partitions);
            qb.build().persistent(false).execute(pool).await?;
            Ok(())
        }

        pub(crate) async fn leave(pool: &DbPool, member: &str) -> Result<(), sqlx::Error> {
            let mut qb = QueryBuilder::<Db>::new("DELETE FROM courier_outbox_relays WHERE member = ");
            qb.push_bind(member.to_owned()).build().execute(pool).await?;
            Ok(())
        }

        /// `(status, count, oldest created_at_us)` per status.
        pub(crate) async fn stats(pool: &DbPool) -> Result<Vec<(String, i64, Option<i64>)>, sqlx::Error> {
            let rows = sqlx::query(
                "SELECT status, COUNT(*), MIN(created_at_us) FROM courier_outbox GROUP BY status",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))).collect()
        }

        fn push_dead_filter(qb: &mut QueryBuilder<'_, Db>, filter: &DeadFilter) {
            qb.push(" WHERE status = 'dead'");
            if !filter.ids.is_empty() {
                qb.push(" AND id");
                push_ids(qb, &filter.ids);
            }
            for (column, value) in [
                ("topic", &filter.topic),
                ("aggregate_type", &filter.aggregate_type),
                ("aggregate_id", &filter.aggregate_id),
                ("event_type", &filter.event_type),
            ] {
                if let Some(value) = value {
                    qb.push(" AND ").push(column).push(" = ").push_bind(value.clone());
                }
            }
        }

        pub(crate) async fn list_dead(
            pool: &DbPool,
            filter: &DeadFilter,
            limit: i64,
        ) -> Result<Vec<DeadEvent>, sqlx::Error> {
            let mut qb = QueryBuilder::<Db>::new(
                "SELECT id, event_id, topic, aggregate_type, aggregate_id, event_type, attempts, last_error, \
                 created_at_us FROM courier_outbox",
            );
            push_dead_filter(&mut qb, filter);
            qb.push(" ORDER BY id LIMIT ").push_bind(limit);
            let rows = qb.build().persistent(false).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    Ok(DeadEvent {
                        id: row.try_get("id")?,
                        event_id: row.try_get("event_id")?,
                        topic: row.try_get("topic")?,
                        aggregate_type: row.try_get("aggregate_type")?,
                        aggregate_id: row.try_get("aggregate_id")?,
                        event_type: row.try_get("event_type")?,
                        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                        last_error: row.try_get("last_error")?,
                        created_at: chrono::DateTime::from_timestamp_micros(row.try_get("created_at_us")?)
                            .unwrap_or_default(),
                    })
                })
                .collect()
        }

        /// Applies `set` to the dead rows `filter` selects and bumps every lease version, so the
        /// relays owning their partitions re-read which aggregates are blocked.
        pub(crate) async fn change_dead(pool: &DbPool, set: &str, filter: &DeadFilter) -> Result<u64, sqlx::Error> {
            let mut tx = pool.begin().await?;
            let mut qb = QueryBuilder::<Db>::new(set);
            push_dead_filter(&mut qb, filter);
            let changed = qb.build().persistent(false).execute(&mut *tx).await?.rows_affected();
            if changed > 0 {
                sqlx::query("UPDATE courier_outbox_leases SET version = version + 1").execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(changed)
        }
    };
}
pub(crate) use common_ops;

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
