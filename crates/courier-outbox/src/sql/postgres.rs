//! PostgreSQL: `= ANY($n)` id lists, `FOR UPDATE SKIP LOCKED` lease claims, LISTEN/NOTIFY.

use std::future::Future;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgDatabaseError, PgPool, PgPoolOptions};
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, QueryBuilder};

use crate::row::NewRow;
use crate::sql::queries::Queries;
use crate::sql::{Dialect, OutboxConnection};
use crate::OutboxError;

/// The channel the insert trigger notifies; see the migration.
pub(crate) const NOTIFY_CHANNEL: &str = "courier_outbox";

impl Dialect for Postgres {
    const BACKEND: &'static str = "postgres";
    /// `clock_timestamp`, not the transaction start.
    const NOW_MS: &'static str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
    const INSERT_IGNORE: &'static str = "INSERT";
    const ON_CONFLICT_IGNORE: &'static str = " ON CONFLICT DO NOTHING";
    /// Unused: [`previous_pending`](Dialect::previous_pending) reaches the index by its form.
    const PENDING_AGGREGATE_HINT: &'static str = "";
    const PREPARE_INSERT: bool = PREPARE_INSERT;
    const PREPARE_ID_LISTS: bool = PREPARE_ID_LISTS;
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const ANALYZE: &'static str = "ANALYZE courier_outbox";

    fn build<'q, 'a: 'q>(qb: &'q mut QueryBuilder<'a, Self>) -> Query<'q, Self, Self::Arguments<'q>> {
        qb.build()
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    fn migrator() -> Migrator {
        sqlx::migrate!("migrations/postgres")
    }

    fn push_ids(qb: &mut QueryBuilder<'_, Self>, ids: &[i64]) {
        qb.push(" = ANY(").push_bind(ids.to_vec()).push(")");
    }

    fn push_rows(qb: &mut QueryBuilder<'_, Self>, rows: Vec<NewRow>) {
        push_rows(qb, rows);
    }

    /// The row just before the claimed one in the pending-aggregate index's order, if it is of
    /// the same aggregate. Asked for as `aggregate_id = … AND id < … ORDER BY id DESC`, the
    /// generic plan depends on the statistics at its first run: made while the outbox held one
    /// aggregate's rows (a parked backlog), it walks the primary key back from each claimed row
    /// to the aggregate's previous row, through every row in between (seconds for a batch). A
    /// row comparison ordered as the index is has no other plan but a sort of every row.
    fn previous_pending() -> String {
        "(SELECT CASE WHEN p.aggregate_id = o.aggregate_id THEN p.id END FROM courier_outbox p \
         WHERE p.status = 'pending' AND (p.aggregate_id, p.id) < (o.aggregate_id, o.id) \
         ORDER BY p.aggregate_id DESC, p.id DESC LIMIT 1) AS previous_pending_id"
            .to_owned()
    }

    fn upsert_member_sql() -> String {
        format!(
            "INSERT INTO courier_outbox_relays (member, expires_at_ms) VALUES ($1, {} + $2) \
             ON CONFLICT (member) DO UPDATE SET expires_at_ms = excluded.expires_at_ms",
            Self::NOW_MS
        )
    }

    /// PostgreSQL reports the key in the detail: `Key (idempotency_key)=(order-42) already exists.`
    fn duplicate_value(err: &dyn sqlx::error::DatabaseError) -> Option<String> {
        let detail = err.try_downcast_ref::<PgDatabaseError>()?.detail()?;
        let start = detail.find(")=(")? + 3;
        let end = detail.rfind(") already exists")?;
        detail.get(start..end).map(str::to_owned)
    }

    /// SKIP LOCKED lets relays that acquire at the same moment take different partitions
    /// instead of queueing behind each other.
    async fn acquire(pool: &PgPool, owner: &str, want: i64, ttl_ms: i64) -> Result<(), sqlx::Error> {
        let sql = format!(
            "UPDATE courier_outbox_leases SET owner = $1, lease_until_ms = {now} + $2 \
             WHERE partition_no IN (SELECT partition_no FROM courier_outbox_leases \
               WHERE owner IS NULL OR lease_until_ms < {now} ORDER BY partition_no LIMIT $3 \
               FOR UPDATE SKIP LOCKED)",
            now = Self::NOW_MS
        );
        sqlx::query(&sql).bind(owner).bind(ttl_ms).bind(want).execute(pool).await?;
        Ok(())
    }

    async fn purge_published(pool: &PgPool, before_us: i64, chunk: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM courier_outbox WHERE id IN (SELECT id FROM courier_outbox \
             WHERE status = 'published' AND published_at_us < $1 ORDER BY id LIMIT $2)",
        )
        .bind(before_us)
        .bind(chunk)
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The relay's connections get [`RELAY_SESSION`].
    fn relay_pool(pool: &PgPool, connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(connections)
            .test_before_acquire(false)
            .connect_lazy_with(pool.connect_options().as_ref().clone().options(RELAY_SESSION))
    }
}

impl crate::sql::sealed::Sealed for PgConnection {}

impl OutboxConnection for PgConnection {
    fn insert(&mut self, rows: Vec<NewRow>) -> impl Future<Output = Result<(), OutboxError>> + Send + '_ {
        Queries::<Postgres>::insert(self, rows)
    }
}

/// An id list is one array parameter, so the relay's fetch and mark are prepared: planning them
/// per call costs the database more than running them. Prepared, they run on a generic plan
/// made once, possibly while the outbox was nearly empty, so the relay's connections plan
/// without sequential scans (see [`RELAY_SESSION`]), and the fetch and mark test the status as
/// a parameter: a generic plan cannot prove a partial index's `status = 'pending'` from it,
/// which leaves the primary key as their one index (with the status literal, a plan made on a
/// small table may scan a whole partial index per call).
const PREPARE_ID_LISTS: bool = true;

/// Session settings of the relay's own connections: one generic plan per prepared statement
/// from its first run, and index access wherever an index applies. The relay's statements all
/// read a few rows through an index; a plan made while the outbox was small must not become a
/// scan of the whole table once it has grown. No JIT: the penalty a disabled sequential scan
/// adds to a plan's cost (on the small lease tables, which have no other path) would otherwise
/// make PostgreSQL JIT-compile those short statements, which takes far longer than running them.
pub(crate) const RELAY_SESSION: [(&str, &str); 3] =
    [("plan_cache_mode", "force_generic_plan"), ("enable_seqscan", "off"), ("jit", "off")];

/// Each column is one array parameter, so an insert of any row count has one statement text:
/// prepared once per connection instead of planned at every call (for a few rows, planning the
/// multi-row `VALUES` form costs more than inserting).
const PREPARE_INSERT: bool = true;

/// Appends the rows as `SELECT … FROM UNNEST($1, …, $16)`, ordered by array position so ids
/// follow the batch's order (the enqueue order within a batch).
fn push_rows(qb: &mut QueryBuilder<'_, Postgres>, rows: Vec<NewRow>) {
    let mut columns = Columns::default();
    for r in rows {
        columns.event_id.push(r.event_id);
        columns.topic.push(r.topic);
        columns.aggregate_type.push(r.aggregate_type);
        columns.aggregate_id.push(r.aggregate_id);
        columns.shard.push(r.shard);
        columns.event_type.push(r.event_type);
        columns.event_version.push(r.event_version);
        columns.payload.push(r.payload);
        columns.headers.push(r.headers);
        columns.traceparent.push(r.traceparent);
        columns.tracestate.push(r.tracestate);
        columns.correlation_id.push(r.correlation_id);
        columns.tenant.push(r.tenant);
        columns.occurred_at_us.push(r.occurred_at_us);
        columns.created_at_us.push(r.created_at_us);
        columns.idempotency_key.push(r.idempotency_key);
    }
    qb.push("SELECT c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16 FROM UNNEST(");
    let mut args = qb.separated(", ");
    args.push_bind(columns.event_id)
        .push_bind(columns.topic)
        .push_bind(columns.aggregate_type)
        .push_bind(columns.aggregate_id)
        .push_bind(columns.shard)
        .push_bind(columns.event_type)
        .push_bind(columns.event_version)
        .push_bind(columns.payload)
        .push_bind(columns.headers)
        .push_bind(columns.traceparent)
        .push_bind(columns.tracestate)
        .push_bind(columns.correlation_id)
        .push_bind(columns.tenant)
        .push_bind(columns.occurred_at_us)
        .push_bind(columns.created_at_us)
        .push_bind(columns.idempotency_key);
    qb.push(
        ") WITH ORDINALITY AS u(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, n) \
         ORDER BY n",
    );
}

/// Enqueue's rows column by column, for [`push_rows`].
#[derive(Default)]
struct Columns {
    event_id: Vec<String>,
    topic: Vec<String>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    shard: Vec<i64>,
    event_type: Vec<String>,
    event_version: Vec<i64>,
    payload: Vec<Vec<u8>>,
    headers: Vec<String>,
    traceparent: Vec<Option<String>>,
    tracestate: Vec<Option<String>>,
    correlation_id: Vec<Option<String>>,
    tenant: Vec<Option<String>>,
    occurred_at_us: Vec<i64>,
    created_at_us: Vec<i64>,
    idempotency_key: Vec<Option<String>>,
}

/// Flags whether relay `member` waits for NOTIFY; the insert trigger notifies only while one
/// does (see the gated-notify migration).
pub(crate) async fn set_listening(pool: &PgPool, member: &str, listening: bool) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE courier_outbox_relays SET listening = $2 WHERE member = $1")
        .bind(member)
        .bind(listening)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgConnectOptions;
    use sqlx::{ConnectOptions as _, Connection as _};

    use super::*;
    use crate::sql::{ClaimQuery, Mark, OwnerCheck};

    type Q = Queries<Postgres>;

    /// The relay's prepared statements run on generic plans made at their first execution, here
    /// on a nearly empty, freshly analyzed outbox. Their plans must still be index lookups
    /// (fetch and mark through the primary key, the scan through the pending index): a plan that
    /// reads a whole table or partial index would cost seconds per call once the outbox is big.
    #[tokio::test]
    async fn relay_statements_keep_index_plans_made_on_a_small_outbox() {
        for (label, plan) in relay_plans("'a-' || (g % 5)", 20).await {
            assert!(!plan.contains("Seq Scan on courier_outbox "), "{label} scans the table:\n{plan}");
            let index = if label.starts_with("scan") {
                "courier_outbox_pending on"
            } else {
                "courier_outbox_pkey on"
            };
            assert!(plan.contains(index), "{label} does not use {index}:\n{plan}");
        }
    }

    /// Planned while the outbox held a single aggregate's rows (a backlog parked behind a dead
    /// event, so the statistics say every row is pending):
    /// - the fetch's previous-pending lookup must still step back on the pending-aggregate
    ///   index: walking the primary key back instead reads, for each claimed row, every row
    ///   down to its aggregate's previous one;
    /// - the scan must still read the pending index: walking the primary key from the cursor
    ///   and filtering by status reads every row published since, at every poll.
    #[tokio::test]
    async fn the_claim_keeps_its_indexes_planned_on_a_parked_backlog() {
        let plans = relay_plans("'parked'", 2000).await;
        let plan = |wanted: &str| &plans.iter().find(|(label, _)| *label == wanted).expect("a plan").1;
        let fetch = plan("fetch");
        assert!(
            fetch.contains("courier_outbox_pending_aggregate on"),
            "the lookup misses its index:\n{fetch}"
        );
        let scan = plan("scan");
        assert!(scan.contains("courier_outbox_pending on"), "the scan misses its index:\n{scan}");
    }

    /// The generic plans of the relay's statements, made on a fresh outbox of `rows` analyzed
    /// rows whose aggregate ids are the SQL expression `aggregates` over `g` (1 to `rows`).
    async fn relay_plans(aggregates: &str, rows: u32) -> Vec<(&'static str, String)> {
        with_outbox(aggregates, rows, "'pending'", |url| async move {
            let options: PgConnectOptions = url.parse().unwrap();
            let mut relay = options.options(RELAY_SESSION).connect().await.unwrap();
            let owner = OwnerCheck { owner: "relay".into(), partition_count: 16 };
            let claim = ClaimQuery { ids: vec![1, 2, 3], owner: owner.clone() };
            let statements = [
                ("fetch", Q::fetch_claimed_query(&claim)),
                ("mark (delete)", Q::mark_query(&[1, 2], Mark::Delete, &owner)),
                ("mark (keep)", Q::mark_query(&[1, 2], Mark::Keep { published_at_us: 1 }, &owner)),
                // Prepared: its one generic plan serves every cursor, the oldest row's (a sweep)
                // as a caught-up relay's.
                ("scan", Q::scan_pending_query(0, 1000)),
            ];
            let mut plans = Vec::new();
            for (i, (label, query)) in statements.into_iter().enumerate() {
                let sql = query.sql().to_owned();
                let params = (1..).take_while(|n| sql.contains(&format!("${n}"))).count();
                sqlx::raw_sql(&format!("PREPARE s{i} AS {sql}")).execute(&mut relay).await.unwrap();
                let nulls = vec!["NULL"; params].join(", ");
                let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE s{i}({nulls})"))
                    .fetch_all(&mut relay)
                    .await
                    .unwrap();
                plans.push((label, lines.join("\n")));
            }
            relay.close().await.unwrap();
            plans
        })
        .await
    }

    /// The relay's gauges read the backlog every few seconds, on the application's ordinary
    /// connections: with a day of published rows kept, it must read the pending index only.
    #[tokio::test]
    async fn the_backlog_reads_the_pending_index_not_the_published_rows() {
        let status = "CASE WHEN g % 1000 = 0 THEN 'pending' ELSE 'published' END";
        let plan = with_outbox("'a-' || (g % 5)", 50_000, status, |url| async move {
            let pool = PgPool::connect(&url).await.unwrap();
            let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", crate::sql::queries::BACKLOG))
                .fetch_all(&pool)
                .await
                .unwrap();
            lines.join("\n")
        })
        .await;
        assert!(!plan.contains("Seq Scan on courier_outbox"), "the backlog scans the table:\n{plan}");
        assert!(plan.contains("courier_outbox_pending on"), "the backlog misses the pending index:\n{plan}");
    }

    /// The dashboard's listings run on the application's connections while relays work: on an
    /// outbox of mostly published rows, each page (newest first, below the previous page's last
    /// id), the dry-run count of a bulk action and the parked aggregates must walk an index, never
    /// the table.
    #[tokio::test]
    async fn dashboard_queries_walk_indexes_not_the_table() {
        use crate::admin::{EventFilter, EventStatus};
        use crate::sql::queries::Order;

        let status = "CASE WHEN g % 100 = 0 THEN 'dead' WHEN g % 10 = 0 THEN 'pending' ELSE 'published' END";
        let page = |status, filter: EventFilter| {
            Q::list_query(status, &filter, Order::NewestBelow(Some(40_000)), 50)
        };
        let by_error = EventFilter::default().error_contains("refused");
        // (label, statement, its parameters as SQL literals, the index it must use)
        let cases = [
            ("page of all events", page(None, EventFilter::default()), "40000, 50", "courier_outbox_pkey"),
            (
                "page of pending events",
                page(Some(EventStatus::Pending), EventFilter::default()),
                "40000, 50",
                "courier_outbox_pending",
            ),
            (
                "page of dead events",
                page(Some(EventStatus::Dead), EventFilter::default()),
                "40000, 50",
                "courier_outbox_blocked",
            ),
            (
                "page of dead events by topic and error",
                page(Some(EventStatus::Dead), by_error.topic("t")),
                "'t', '%refused%', 40000, 50",
                "courier_outbox_blocked",
            ),
            (
                "page of published events by topic",
                page(Some(EventStatus::Published), EventFilter::default().topic("t")),
                "'t', 40000, 50",
                "courier_outbox_pkey",
            ),
            ("parked heads", Q::parked_heads_query(100), "100", "courier_outbox_blocked"),
            (
                "count of dead events",
                Q::count_query(Some(EventStatus::Dead), &EventFilter::default(), None),
                "",
                "courier_outbox_blocked",
            ),
            (
                "waiting behind a head",
                Q::waiting_query(["a-1".to_owned()]),
                "'a-1'",
                "courier_outbox_pending_aggregate",
            ),
        ];
        let plans = with_outbox("'a-' || (g % 500)", 50_000, status, |url| async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::raw_sql("UPDATE courier_outbox SET last_error = 'refused by the broker' WHERE status = 'dead'; ANALYZE courier_outbox")
                .execute(&mut conn)
                .await
                .unwrap();
            let mut plans = Vec::new();
            for (i, (label, query, parameters, index)) in cases.into_iter().enumerate() {
                let sql = query.sql().to_owned();
                let count = (1..).take_while(|n| sql.contains(&format!("${n}"))).count();
                let given = parameters.split(", ").filter(|p| !p.is_empty()).count();
                assert_eq!(count, given, "{label}: parameters of {sql}");
                sqlx::raw_sql(&format!("PREPARE d{i} AS {sql}")).execute(&mut conn).await.unwrap();
                let execute = if given == 0 { format!("d{i}") } else { format!("d{i}({parameters})") };
                let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE {execute}"))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                plans.push((label, index, lines.join("\n")));
            }
            plans
        })
        .await;
        for (label, index, plan) in plans {
            assert!(!plan.contains("Seq Scan on courier_outbox"), "{label} scans the table:\n{plan}");
            assert!(plan.contains(index), "{label} does not use {index}:\n{plan}");
        }
    }

    /// Runs `f` on the URL of a fresh outbox of `rows` analyzed rows, whose aggregate ids and
    /// statuses are the SQL expressions `aggregates` and `status` over `g` (1 to `rows`).
    async fn with_outbox<F, Fut, T>(aggregates: &str, rows: u32, status: &str, f: F) -> T
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = T>,
    {
        let server = "postgres://postgres@127.0.0.1:5432";
        let name = format!("courier_plans_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&format!("{server}/test"))
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {server} is required (scripts/services.sh): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let url = format!("{server}/{name}");
        let pool = PgPool::connect(&url).await.unwrap();
        Queries::<Postgres>::migrate(&pool).await.unwrap();
        sqlx::query(&format!(
            "INSERT INTO courier_outbox (event_id, topic, aggregate_type, aggregate_id, shard, event_type, \
             event_version, payload, headers, occurred_at_us, created_at_us, status) \
             SELECT gen_random_uuid()::text, 't', 'a', {aggregates}, g, 'E', 1, '\\x00', '{{}}', 0, 0, {status} \
             FROM generate_series(1, {rows}) g"
        ))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("ANALYZE courier_outbox").execute(&pool).await.unwrap();
        pool.close().await;
        let outcome = f(url).await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
        outcome
    }
}
