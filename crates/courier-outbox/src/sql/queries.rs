//! The statements every database shares, written once over a [`Dialect`].

use std::marker::PhantomData;

use sqlx::migrate::Migrate;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row as _, Type};

use crate::admin::{
    contains_pattern, relay_instances, EventDetail, EventFilter, EventStatus, EventSummary, ParkedAggregate,
    RelayInstance,
};
use crate::row::{now_us, ClaimedRow, NewRow, RawRow, CLAIM_COLUMNS, DEAD, PENDING, PUBLISHED};
use crate::sql::{
    duplicate_key, BlockedRow, ClaimQuery, Dialect, Failure, Mark, OwnerCheck, INSERT_CHUNK, INSERT_INTO,
};
use crate::OutboxError;

/// The backlog's statement (see [`Queries::backlog`]).
pub(crate) const BACKLOG: &str =
    "SELECT COUNT(*), (SELECT created_at_us FROM courier_outbox WHERE status = 'pending' \
     ORDER BY id LIMIT 1) FROM courier_outbox WHERE status = 'pending'";

/// The columns of an [`EventSummary`], in the order `decode_summary` reads them.
const SUMMARY_COLUMNS: &str =
    "id, event_id, topic, aggregate_type, aggregate_id, event_type, status, attempts, \
     last_error, created_at_us, last_attempt_at_us";

/// The order of a listing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Order {
    /// By id, ascending (the CLI's `outbox dead`).
    OldestFirst,
    /// By id, descending, below the given id when there is one: a page of the dashboard.
    NewestBelow(Option<i64>),
}

/// Starts a `WHERE` clause at its first condition and joins the next ones with `AND`.
#[derive(Default)]
struct Where {
    started: bool,
}

impl Where {
    fn and<'a, 'q, D: sqlx::Database>(
        &mut self,
        qb: &'a mut QueryBuilder<'q, D>,
    ) -> &'a mut QueryBuilder<'q, D> {
        qb.push(if std::mem::replace(&mut self.started, true) { " AND " } else { " WHERE " })
    }
}

/// A `*_us` column as a time (the epoch if out of range).
fn timestamp(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Reads an identifier column (`event_id`, `topic`, `aggregate_type`, `aggregate_id`,
/// `event_type`) as text. On MySQL these columns have a binary collation, so that they compare
/// byte-wise, and the server flags them BINARY; sqlx's type check then takes them for byte
/// strings and refuses a `String`. The decode itself still checks that the value is UTF-8.
fn text<R, I>(row: &R, index: I) -> Result<String, sqlx::Error>
where
    R: sqlx::Row,
    I: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
{
    row.try_get_unchecked(index)
}

/// The outbox's statements on database `D`, as associated functions taking a pool (or, for
/// enqueue, a connection). The bounds are what sqlx needs to build, run and decode them; every
/// database the outbox supports meets them, so callers name a concrete `D` and see none of them.
pub(crate) struct Queries<D>(PhantomData<D>);

impl<D> Queries<D>
where
    D: Dialect,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    D::Connection: Migrate,
    for<'q> i64: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> Option<i64>: Encode<'q, D>,
    for<'q> String: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
    for<'q> Vec<u8>: Decode<'q, D> + Type<D>,
    usize: ColumnIndex<D::Row>,
    for<'n> &'n str: ColumnIndex<D::Row>,
{
    /// Creates or upgrades the outbox tables, next to the application's own sqlx migrations.
    pub(crate) async fn migrate(pool: &Pool<D>) -> Result<(), OutboxError> {
        let mut migrator = D::migrator();
        // The application's own sqlx migrations may share `_sqlx_migrations`.
        migrator.set_ignore_missing(true);
        migrator.run(pool).await?;
        Ok(())
    }

    /// Enqueue's INSERT of `rows` on the caller's connection (or transaction).
    pub(crate) async fn insert(conn: &mut D::Connection, rows: Vec<NewRow>) -> Result<(), OutboxError> {
        // One statement per chunk keeps the caller's transaction to few round trips.
        if rows.len() > INSERT_CHUNK {
            return Err(OutboxError::Config(format!(
                "at most {INSERT_CHUNK} events per enqueue_batch call, got {}",
                rows.len()
            )));
        }
        let mut qb = QueryBuilder::<D>::new(INSERT_INTO);
        let keys: Vec<String> = rows.iter().filter_map(|r| r.idempotency_key.clone()).collect();
        D::push_rows(&mut qb, rows);
        match D::build(&mut qb).persistent(D::PREPARE_INSERT).execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(err) => Err(duplicate_key(err, &keys, D::duplicate_value)),
        }
    }

    /// Step 1 of a claim: `(id, shard)` of the next pending rows in id order. No filter but
    /// the index predicate, so every database walks the pending index and stops at the limit.
    pub(crate) async fn scan_pending(
        pool: &Pool<D>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        let mut qb = Self::scan_pending_query(after_id, limit);
        let rows = D::build(&mut qb).fetch_all(pool).await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
    }

    pub(crate) fn scan_pending_query(after_id: i64, limit: i64) -> QueryBuilder<'static, D> {
        let mut qb =
            QueryBuilder::<D>::new("SELECT id, shard FROM courier_outbox WHERE status = 'pending' AND id > ");
        qb.push_bind(after_id).push(" ORDER BY id LIMIT ").push_bind(limit);
        qb
    }

    /// Step 2 of a claim: the chosen rows, if still pending and in a partition the database
    /// shows leased to this relay (see [`OwnerCheck`]).
    pub(crate) async fn fetch_claimed(
        pool: &Pool<D>,
        q: &ClaimQuery,
    ) -> Result<Vec<ClaimedRow>, sqlx::Error> {
        let mut qb = Self::fetch_claimed_query(q);
        let rows = D::build(&mut qb).persistent(D::PREPARE_ID_LISTS).fetch_all(pool).await?;
        rows.iter().map(|row| Self::decode_claimed(row).map(RawRow::into_claimed)).collect()
    }

    pub(crate) fn fetch_claimed_query(q: &ClaimQuery) -> QueryBuilder<'static, D> {
        let mut qb = QueryBuilder::<D>::new("SELECT ");
        qb.push(CLAIM_COLUMNS).push(", ").push(D::previous_pending());
        // The status is a parameter (here and in the mark): see PostgreSQL's `PREPARE_ID_LISTS`.
        qb.push(" FROM courier_outbox o WHERE o.status = ").push_bind(PENDING).push(" AND o.id");
        D::push_ids(&mut qb, &q.ids);
        Self::push_owner_check(&mut qb, &q.owner, "o");
        qb.push(" ORDER BY o.id");
        qb
    }

    /// Reads the columns by position, in `CLAIM_COLUMNS` order (a lookup by name hashes the
    /// name, for every column of every row the relay reads).
    fn decode_claimed(row: &D::Row) -> Result<RawRow, sqlx::Error> {
        Ok(RawRow {
            id: row.try_get(0)?,
            event_id: text(row, 1)?,
            topic: text(row, 2)?,
            aggregate_type: text(row, 3)?,
            aggregate_id: text(row, 4)?,
            shard: row.try_get(5)?,
            event_type: text(row, 6)?,
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
    /// failed attempts; each only where `owner` still holds the row's lease.
    pub(crate) async fn write(
        pool: &Pool<D>,
        published: &[i64],
        mark: Mark,
        failures: &[Failure],
        owner: &OwnerCheck,
    ) -> Result<(), sqlx::Error> {
        if !published.is_empty() {
            let mut qb = Self::mark_query(published, mark, owner);
            let done = D::build(&mut qb).persistent(D::PREPARE_ID_LISTS).execute(pool).await?;
            let marked = D::rows_affected(&done);
            if marked < published.len() as u64 {
                tracing::warn!(
                    owner = %owner.owner,
                    unmarked = published.len() as u64 - marked,
                    "acknowledged outbox rows were not marked: their partition is no longer leased to this relay \
                     (the next owner publishes them again; brokers that de-duplicate by event id drop the copies), \
                     or they are no longer pending"
                );
            }
        }
        for f in failures {
            let mut qb = QueryBuilder::<D>::new("UPDATE courier_outbox SET status = ");
            qb.push_bind(if f.dead { DEAD } else { PENDING })
                .push(", attempts = ")
                .push_bind(f.attempts)
                .push(", next_attempt_at_us = ")
                .push_bind(f.next_attempt_at_us)
                .push(", last_error = ")
                .push_bind(f.error.clone())
                .push(", last_attempt_at_us = ")
                .push_bind(now_us())
                .push(" WHERE status = ")
                .push_bind(PENDING)
                .push(" AND id = ")
                .push_bind(f.id);
            Self::push_owner_check(&mut qb, owner, "courier_outbox");
            D::build(&mut qb).execute(pool).await?;
        }
        Ok(())
    }

    /// Appends `owner` as a condition on the outbox row named `row` (the table or its alias).
    fn push_owner_check(qb: &mut QueryBuilder<'static, D>, owner: &OwnerCheck, row: &str) {
        qb.push(" AND EXISTS (SELECT 1 FROM courier_outbox_leases l WHERE l.partition_no = ")
            .push(row)
            .push(".shard % ")
            .push_bind(owner.partition_count)
            .push(" AND l.owner = ")
            .push_bind(owner.owner.clone())
            .push(" AND l.lease_until_ms > ")
            .push(D::NOW_MS)
            .push(")");
    }

    pub(crate) fn mark_query(published: &[i64], mark: Mark, owner: &OwnerCheck) -> QueryBuilder<'static, D> {
        let mut qb = match mark {
            Mark::Keep { published_at_us } => {
                let mut qb = QueryBuilder::<D>::new("UPDATE courier_outbox SET status = ");
                qb.push_bind(PUBLISHED).push(", published_at_us = ").push_bind(published_at_us);
                qb
            }
            Mark::Delete => QueryBuilder::<D>::new("DELETE FROM courier_outbox"),
        };
        qb.push(" WHERE status = ").push_bind(PENDING).push(" AND id");
        D::push_ids(&mut qb, published);
        Self::push_owner_check(&mut qb, owner, "courier_outbox");
        qb
    }

    /// The rows blocking their aggregate in `partitions`: dead, or pending with a retry scheduled.
    pub(crate) async fn blocked(
        pool: &Pool<D>,
        partitions: &[i64],
        partition_count: i64,
    ) -> Result<Vec<BlockedRow>, sqlx::Error> {
        let mut qb = QueryBuilder::<D>::new(
            "SELECT id, aggregate_id, status, next_attempt_at_us FROM courier_outbox \
             WHERE (status = 'dead' OR (status = 'pending' AND attempts > 0)) AND shard % ",
        );
        qb.push_bind(partition_count);
        D::push_ids(&mut qb, partitions);
        qb.push(" ORDER BY id");
        let rows = D::build(&mut qb).persistent(false).fetch_all(pool).await?;
        rows.iter()
            .map(|row| {
                Ok(BlockedRow {
                    id: row.try_get("id")?,
                    aggregate_id: text(row, "aggregate_id")?,
                    dead: row.try_get::<String, _>("status")? == DEAD,
                    next_attempt_at_us: row.try_get("next_attempt_at_us")?,
                })
            })
            .collect()
    }

    /// Creates the lease rows `0..count` if missing and returns how many lease rows exist.
    pub(crate) async fn ensure_partitions(pool: &Pool<D>, count: i64) -> Result<i64, sqlx::Error> {
        let mut qb = QueryBuilder::<D>::new(D::INSERT_IGNORE);
        qb.push(" INTO courier_outbox_leases (partition_no) ");
        qb.push_values(0..count, |mut b, p| {
            b.push_bind(p);
        });
        qb.push(D::ON_CONFLICT_IGNORE);
        D::build(&mut qb).persistent(false).execute(pool).await?;
        sqlx::query_scalar("SELECT COUNT(*) FROM courier_outbox_leases").fetch_one(pool).await
    }

    /// Records this relay as alive for `ttl_ms`, forgets relays gone for an hour, and returns
    /// how many relays are alive.
    pub(crate) async fn heartbeat(pool: &Pool<D>, member: &str, ttl_ms: i64) -> Result<i64, sqlx::Error> {
        sqlx::query(&D::upsert_member_sql()).bind(member).bind(ttl_ms).execute(pool).await?;
        let mut qb = QueryBuilder::<D>::new("DELETE FROM courier_outbox_relays WHERE expires_at_ms < ");
        qb.push(D::NOW_MS).push(" - 3600000");
        D::build(&mut qb).execute(pool).await?;
        let mut qb =
            QueryBuilder::<D>::new("SELECT COUNT(*) FROM courier_outbox_relays WHERE expires_at_ms > ");
        qb.push(D::NOW_MS);
        D::build(&mut qb).fetch_one(pool).await?.try_get(0)
    }

    /// Extends this relay's leases and returns `(partition, version)` of those it holds.
    pub(crate) async fn renew(
        pool: &Pool<D>,
        owner: &str,
        ttl_ms: i64,
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        let mut qb = QueryBuilder::<D>::new("UPDATE courier_outbox_leases SET lease_until_ms = ");
        qb.push(D::NOW_MS).push(" + ").push_bind(ttl_ms).push(" WHERE owner = ").push_bind(owner.to_owned());
        D::build(&mut qb).execute(pool).await?;
        let mut qb =
            QueryBuilder::<D>::new("SELECT partition_no, version FROM courier_outbox_leases WHERE owner = ");
        qb.push_bind(owner.to_owned())
            .push(" AND lease_until_ms > ")
            .push(D::NOW_MS)
            .push(" ORDER BY partition_no");
        let rows = D::build(&mut qb).fetch_all(pool).await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
    }

    /// Gives up `owner`'s leases of `partitions`, so another relay can take them at once.
    pub(crate) async fn release(pool: &Pool<D>, owner: &str, partitions: &[i64]) -> Result<(), sqlx::Error> {
        let mut qb = QueryBuilder::<D>::new(
            "UPDATE courier_outbox_leases SET owner = NULL, lease_until_ms = 0 WHERE owner = ",
        );
        qb.push_bind(owner.to_owned()).push(" AND partition_no");
        D::push_ids(&mut qb, partitions);
        D::build(&mut qb).persistent(false).execute(pool).await?;
        Ok(())
    }

    /// Milliseconds until relay `member`'s heartbeat expires; `None` when it has none.
    pub(crate) async fn heartbeat_left_ms(pool: &Pool<D>, member: &str) -> Result<Option<i64>, sqlx::Error> {
        let mut qb = QueryBuilder::<D>::new("SELECT expires_at_ms - ");
        qb.push(D::NOW_MS).push(" FROM courier_outbox_relays WHERE member = ").push_bind(member.to_owned());
        let row = D::build(&mut qb).fetch_optional(pool).await?;
        row.map(|row| row.try_get(0)).transpose()
    }

    /// Removes relay `member` from the relays sharing the partitions.
    pub(crate) async fn leave(pool: &Pool<D>, member: &str) -> Result<(), sqlx::Error> {
        let mut qb = QueryBuilder::<D>::new("DELETE FROM courier_outbox_relays WHERE member = ");
        qb.push_bind(member.to_owned());
        D::build(&mut qb).execute(pool).await?;
        Ok(())
    }

    /// `(status, count, oldest created_at_us)` per status.
    pub(crate) async fn stats(pool: &Pool<D>) -> Result<Vec<(String, i64, Option<i64>)>, sqlx::Error> {
        let rows =
            sqlx::query("SELECT status, COUNT(*), MIN(created_at_us) FROM courier_outbox GROUP BY status")
                .fetch_all(pool)
                .await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))).collect()
    }

    /// `(pending rows, created_at_us of the lowest pending id)`, both through the pending
    /// index, so the cost follows the backlog and not the retained published rows.
    pub(crate) async fn backlog(pool: &Pool<D>) -> Result<(i64, Option<i64>), sqlx::Error> {
        let row = sqlx::query(BACKLOG).fetch_one(pool).await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Whether the database answers.
    pub(crate) async fn ping(pool: &Pool<D>) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(pool).await?;
        Ok(())
    }

    /// Appends the `WHERE` clause selecting `filter`'s events of `status`. The status is written
    /// as a literal, so that PostgreSQL matches it to the partial indexes (pending, blocked).
    /// Returns the clause, for further conditions.
    fn push_filter(qb: &mut QueryBuilder<'_, D>, status: Option<EventStatus>, filter: &EventFilter) -> Where {
        let mut clause = Where::default();
        if let Some(status) = status {
            clause.and(qb).push("status = '").push(status.as_str()).push("'");
        }
        if !filter.ids.is_empty() {
            clause.and(qb).push("id");
            D::push_ids(qb, &filter.ids);
        }
        for (column, value) in [
            ("topic", &filter.topic),
            ("aggregate_type", &filter.aggregate_type),
            ("aggregate_id", &filter.aggregate_id),
            ("event_type", &filter.event_type),
        ] {
            if let Some(value) = value {
                clause.and(qb).push(column).push(" = ").push_bind(value.clone());
            }
        }
        if let Some(text) = &filter.error_contains {
            clause.and(qb).push("last_error LIKE ").push_bind(contains_pattern(text)).push(" ESCAPE '!'");
        }
        if let Some(from) = filter.created_from {
            clause.and(qb).push("created_at_us >= ").push_bind(from.timestamp_micros());
        }
        if let Some(to) = filter.created_to {
            clause.and(qb).push("created_at_us < ").push_bind(to.timestamp_micros());
        }
        clause
    }

    /// The listing of `filter`'s events of `status` in `order`, at most `limit`.
    pub(crate) fn list_query(
        status: Option<EventStatus>,
        filter: &EventFilter,
        order: Order,
        limit: i64,
    ) -> QueryBuilder<'static, D> {
        let mut qb = QueryBuilder::<D>::new("SELECT ");
        qb.push(SUMMARY_COLUMNS).push(" FROM courier_outbox");
        let mut clause = Self::push_filter(&mut qb, status, filter);
        // Keyset pagination: the next page starts below the last id shown, through the index,
        // however deep it is (an OFFSET would read and drop every row before it).
        match order {
            Order::OldestFirst => qb.push(" ORDER BY id"),
            Order::NewestBelow(below) => {
                if let Some(below) = below {
                    clause.and(&mut qb).push("id < ").push_bind(below);
                }
                qb.push(" ORDER BY id DESC")
            }
        };
        qb.push(" LIMIT ").push_bind(limit);
        qb
    }

    /// `filter`'s events of `status` in `order`, at most `limit`.
    pub(crate) async fn list(
        pool: &Pool<D>,
        status: Option<EventStatus>,
        filter: &EventFilter,
        order: Order,
        limit: i64,
    ) -> Result<Vec<EventSummary>, sqlx::Error> {
        let mut qb = Self::list_query(status, filter, order, limit);
        let rows = D::build(&mut qb).persistent(false).fetch_all(pool).await?;
        rows.iter().map(Self::decode_summary).collect()
    }

    /// How many of `filter`'s events have `status`, counting no further than `cap` when given.
    pub(crate) fn count_query(
        status: Option<EventStatus>,
        filter: &EventFilter,
        cap: Option<i64>,
    ) -> QueryBuilder<'static, D> {
        let Some(cap) = cap else {
            let mut qb = QueryBuilder::<D>::new("SELECT COUNT(*) FROM courier_outbox");
            Self::push_filter(&mut qb, status, filter);
            return qb;
        };
        // The LIMIT stops the scan at `cap` rows: a count of a million published rows would
        // read them all.
        let mut qb = QueryBuilder::<D>::new("SELECT COUNT(*) FROM (SELECT 1 FROM courier_outbox");
        Self::push_filter(&mut qb, status, filter);
        qb.push(" LIMIT ").push_bind(cap).push(") capped");
        qb
    }

    /// See [`count_query`](Self::count_query).
    pub(crate) async fn count(
        pool: &Pool<D>,
        status: Option<EventStatus>,
        filter: &EventFilter,
        cap: Option<i64>,
    ) -> Result<u64, sqlx::Error> {
        let mut qb = Self::count_query(status, filter, cap);
        let count: i64 = D::build(&mut qb).persistent(false).fetch_one(pool).await?.try_get(0)?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    /// Reads [`SUMMARY_COLUMNS`] by position.
    fn decode_summary(row: &D::Row) -> Result<EventSummary, sqlx::Error> {
        let status: String = text(row, 6)?;
        Ok(EventSummary {
            id: row.try_get(0)?,
            event_id: text(row, 1)?,
            topic: text(row, 2)?,
            aggregate_type: text(row, 3)?,
            aggregate_id: text(row, 4)?,
            event_type: text(row, 5)?,
            status: status.parse().map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            attempts: u32::try_from(row.try_get::<i64, _>(7)?).unwrap_or(u32::MAX),
            last_error: row.try_get_unchecked(8)?,
            created_at: timestamp(row.try_get(9)?),
            last_attempt_at: row.try_get::<Option<i64>, _>(10)?.map(timestamp),
        })
    }

    /// Every column of event `id`.
    pub(crate) async fn detail(pool: &Pool<D>, id: i64) -> Result<Option<EventDetail>, sqlx::Error> {
        let mut qb = QueryBuilder::<D>::new("SELECT ");
        qb.push(SUMMARY_COLUMNS).push(
            ", shard, event_version, payload, headers, traceparent, tracestate, correlation_id, tenant, \
             idempotency_key, occurred_at_us, next_attempt_at_us, published_at_us FROM courier_outbox WHERE id = ",
        );
        qb.push_bind(id);
        let Some(row) = D::build(&mut qb).persistent(false).fetch_optional(pool).await? else {
            return Ok(None);
        };
        // The detail's own columns follow the summary's.
        let base = SUMMARY_COLUMNS.split(',').count();
        let headers_text: String = row.try_get_unchecked(base + 3)?;
        Ok(Some(EventDetail {
            summary: Self::decode_summary(&row)?,
            shard: row.try_get(base)?,
            event_version: row.try_get(base + 1)?,
            payload: row.try_get(base + 2)?,
            headers: serde_json::from_str(&headers_text).unwrap_or_default(),
            headers_text,
            traceparent: row.try_get_unchecked(base + 4)?,
            tracestate: row.try_get_unchecked(base + 5)?,
            correlation_id: row.try_get_unchecked(base + 6)?,
            tenant: row.try_get_unchecked(base + 7)?,
            idempotency_key: row.try_get_unchecked(base + 8)?,
            occurred_at: timestamp(row.try_get(base + 9)?),
            next_attempt_at: row.try_get::<Option<i64>, _>(base + 10)?.map(timestamp),
            published_at: row.try_get::<Option<i64>, _>(base + 11)?.map(timestamp),
        }))
    }

    /// The ids of the oldest dead event of each aggregate that has one, oldest first, at most
    /// `limit`: the heads that park their aggregates.
    pub(crate) fn parked_heads_query(limit: i64) -> QueryBuilder<'static, D> {
        let mut qb = QueryBuilder::<D>::new(
            "SELECT MIN(id) FROM courier_outbox WHERE status = 'dead' GROUP BY aggregate_id ORDER BY MIN(id) LIMIT ",
        );
        qb.push_bind(limit);
        qb
    }

    /// The aggregates parked behind a dead event, with their head and how many events wait.
    pub(crate) async fn parked(pool: &Pool<D>, limit: i64) -> Result<Vec<ParkedAggregate>, sqlx::Error> {
        let mut qb = Self::parked_heads_query(limit);
        let heads: Vec<i64> = D::build(&mut qb)
            .persistent(false)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if heads.is_empty() {
            return Ok(Vec::new());
        }
        let filter = EventFilter::ids(heads.iter().copied());
        let heads = Self::list(pool, None, &filter, Order::OldestFirst, limit).await?;
        let mut qb = Self::waiting_query(heads.iter().map(|h| h.aggregate_id.clone()));
        let waiting: std::collections::HashMap<String, i64> = D::build(&mut qb)
            .persistent(false)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((text(row, 0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(heads
            .into_iter()
            .map(|head| {
                let waiting = waiting.get(&head.aggregate_id).copied().unwrap_or_default();
                ParkedAggregate { head, waiting: u64::try_from(waiting).unwrap_or_default() }
            })
            .collect())
    }

    /// `(aggregate_id, pending events)` of `aggregates`, through the pending-aggregate index.
    pub(crate) fn waiting_query(aggregates: impl IntoIterator<Item = String>) -> QueryBuilder<'static, D> {
        let mut qb = QueryBuilder::<D>::new(
            "SELECT aggregate_id, COUNT(*) FROM courier_outbox WHERE status = 'pending' AND aggregate_id IN (",
        );
        let mut list = qb.separated(", ");
        for aggregate in aggregates {
            list.push_bind(aggregate);
        }
        qb.push(") GROUP BY aggregate_id");
        qb
    }

    /// The relay instances (heartbeats) and the partitions each leases.
    pub(crate) async fn relays(pool: &Pool<D>) -> Result<Vec<RelayInstance>, sqlx::Error> {
        let mut qb = QueryBuilder::<D>::new("SELECT member, expires_at_ms - ");
        qb.push(D::NOW_MS).push(" FROM courier_outbox_relays");
        let heartbeats = D::build(&mut qb)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((text(row, 0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let mut qb = QueryBuilder::<D>::new("SELECT partition_no, owner, lease_until_ms - ");
        qb.push(D::NOW_MS).push(" FROM courier_outbox_leases WHERE owner IS NOT NULL");
        let leases = D::build(&mut qb)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, text(row, 1)?, row.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(relay_instances(heartbeats, leases))
    }

    /// Dead events matching `filter`, oldest first, at most `limit`.
    pub(crate) async fn list_dead(
        pool: &Pool<D>,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<Vec<EventSummary>, sqlx::Error> {
        Self::list(pool, Some(EventStatus::Dead), filter, Order::OldestFirst, limit).await
    }

    /// Applies `set` to the dead rows `filter` selects and bumps every lease version, so the
    /// relays owning their partitions re-read which aggregates are blocked.
    pub(crate) async fn change_dead(
        pool: &Pool<D>,
        set: &str,
        filter: &EventFilter,
    ) -> Result<u64, sqlx::Error> {
        let mut tx = pool.begin().await?;
        let mut qb = QueryBuilder::<D>::new(set);
        Self::push_filter(&mut qb, Some(EventStatus::Dead), filter);
        let changed = D::rows_affected(&D::build(&mut qb).persistent(false).execute(&mut *tx).await?);
        if changed > 0 {
            sqlx::query("UPDATE courier_outbox_leases SET version = version + 1").execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Refreshes the planner statistics of the outbox table.
    pub(crate) async fn analyze(pool: &Pool<D>) -> Result<(), sqlx::Error> {
        // MySQL answers ANALYZE TABLE with a result set.
        sqlx::query(D::ANALYZE).fetch_all(pool).await?;
        Ok(())
    }

    /// The benchmark baseline: claims the next `batch` pending rows in id order in a
    /// transaction (locking them where the database can skip locked rows), reads what a relay
    /// reads, and marks them published with one UPDATE (one DELETE when `delete`), until none
    /// remain. Returns how many rows it marked.
    pub(crate) async fn claim_and_mark(
        pool: &Pool<D>,
        batch: usize,
        delete: bool,
    ) -> Result<u64, sqlx::Error> {
        let claim = format!(
            "SELECT id, event_id, topic, aggregate_type, aggregate_id, shard, event_type, event_version, \
             payload, headers, traceparent, tracestate, correlation_id, tenant, occurred_at_us, created_at_us, \
             attempts FROM courier_outbox WHERE status = 'pending' ORDER BY id LIMIT {batch}{}",
            D::SKIP_LOCKED
        );
        let mut marked = 0u64;
        loop {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(&claim).fetch_all(&mut *tx).await?;
            if rows.is_empty() {
                break;
            }
            let mut mark = if delete {
                QueryBuilder::<D>::new("DELETE FROM courier_outbox")
            } else {
                let mut update = QueryBuilder::<D>::new(
                    "UPDATE courier_outbox SET status = 'published', published_at_us = ",
                );
                update.push_bind(crate::row::now_us());
                update
            };
            mark.push(" WHERE id IN (");
            let mut ids = mark.separated(", ");
            for row in &rows {
                ids.push_bind(row.try_get::<i64, _>(0)?);
            }
            mark.push(")");
            D::build(&mut mark).execute(&mut *tx).await?;
            tx.commit().await?;
            marked += rows.len() as u64;
        }
        Ok(marked)
    }

    /// For benchmarks: makes the oldest pending row of `aggregate_id` dead, as the relay does
    /// after its last attempt, so the aggregate's later rows wait behind it. Returns its id.
    pub(crate) async fn bury_head(pool: &Pool<D>, aggregate_id: &str) -> Result<Option<i64>, sqlx::Error> {
        let mut qb = QueryBuilder::<D>::new("SELECT MIN(id) FROM courier_outbox WHERE status = ");
        qb.push_bind(PENDING).push(" AND aggregate_id = ").push_bind(aggregate_id.to_owned());
        let head: Option<i64> = D::build(&mut qb).fetch_one(pool).await?.try_get(0)?;
        let Some(id) = head else { return Ok(None) };
        let mut qb = QueryBuilder::<D>::new("UPDATE courier_outbox SET status = ");
        qb.push_bind(DEAD)
            .push(", attempts = 1, last_error = 'buried by a benchmark', last_attempt_at_us = ")
            .push_bind(now_us())
            .push(" WHERE id = ")
            .push_bind(id);
        D::build(&mut qb).execute(pool).await?;
        Ok(Some(id))
    }
}
