//! [`Store`]: the outbox tables of one database, for the relay and for operators.

use std::time::Duration;

use courier_core::EventId;

use crate::admin::{DeadEvent, DeadFilter, OutboxStats};
use crate::row::{now_us, ClaimedRow, DEAD, PENDING, PUBLISHED};
use crate::sql::{BlockedRow, ClaimQuery, Failure, Mark};
use crate::{Enqueue, Outbox, OutboxError};

/// A connection pool to a database holding the outbox tables. Cheap to clone.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Store {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

/// Runs `$call` from the module of the store's database with its pool as first argument.
macro_rules! on_db {
    ($store:expr, $f:ident($($arg:expr),*)) => {
        match $store {
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => crate::sql::postgres::$f(pool $(, $arg)*).await,
            #[cfg(feature = "mysql")]
            Store::MySql(pool) => crate::sql::mysql::$f(pool $(, $arg)*).await,
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => crate::sql::sqlite::$f(pool $(, $arg)*).await,
        }
    };
}

/// Purge deletes in chunks so it never holds long locks.
const PURGE_CHUNK: i64 = 5000;

impl Store {
    /// Connects to `url` (`postgres://`, `mysql://`/`mariadb://`, `sqlite://`). SQLite files are
    /// created if missing and opened in WAL mode so readers never wait for the writer.
    pub async fn connect(url: &str) -> Result<Self, OutboxError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(Self::Postgres(
                sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(url).await?,
            )),
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => {
                let url = url.replacen("mariadb:", "mysql:", 1);
                Ok(Self::MySql(sqlx::mysql::MySqlPoolOptions::new().max_connections(16).connect(&url).await?))
            }
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                use std::str::FromStr;
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30));
                Ok(Self::Sqlite(
                    sqlx::sqlite::SqlitePoolOptions::new().max_connections(8).connect_with(options).await?,
                ))
            }
            _ => Err(OutboxError::Config(format!(
                "unsupported database URL {url:?}: expected postgres://, mysql:// or sqlite:// \
                 (each needs its cargo feature)"
            ))),
        }
    }

    /// Short database name for logs and metrics (`postgres`, `mysql`, `sqlite`).
    pub fn backend(&self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
            #[cfg(feature = "mysql")]
            Self::MySql(_) => "mysql",
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Creates or upgrades the outbox tables. The migrations are recorded in sqlx's
    /// `_sqlx_migrations` table next to the application's own (unknown versions are ignored).
    pub async fn migrate(&self) -> Result<(), OutboxError> {
        on_db!(self, migrate())
    }

    /// Enqueues `events` in a transaction of their own (for scripts and tools; applications
    /// enqueue inside their business transaction with [`Outbox::enqueue`]).
    pub async fn enqueue(
        &self,
        outbox: &Outbox,
        events: &[Enqueue<'_>],
    ) -> Result<Vec<EventId>, OutboxError> {
        macro_rules! in_tx {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                let ids = outbox.enqueue_batch(&mut *tx, events.iter().copied()).await?;
                tx.commit().await?;
                Ok(ids)
            }};
        }
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(pool) => in_tx!(pool),
            #[cfg(feature = "mysql")]
            Self::MySql(pool) => in_tx!(pool),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(pool) => in_tx!(pool),
        }
    }

    /// Counts by status and the age of the oldest pending event.
    pub async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let rows = on_db!(self, stats())?;
        let mut stats = OutboxStats::default();
        for (status, count, oldest_us) in rows {
            let count = u64::try_from(count).unwrap_or_default();
            match status.as_str() {
                PENDING => {
                    stats.pending = count;
                    stats.oldest_pending_age = oldest_us
                        .map(|t| Duration::from_micros(u64::try_from(now_us() - t).unwrap_or_default()));
                }
                PUBLISHED => stats.published = count,
                DEAD => stats.dead = count,
                _ => {}
            }
        }
        Ok(stats)
    }

    /// Dead events matching `filter`, oldest first, at most `limit`.
    pub async fn list_dead(&self, filter: &DeadFilter, limit: u32) -> Result<Vec<DeadEvent>, OutboxError> {
        Ok(on_db!(self, list_dead(filter, i64::from(limit)))?)
    }

    /// Makes the dead events matching `filter` pending again with a fresh attempt budget; their
    /// aggregates resume in order once the relay owning them notices (at its next lease renewal).
    /// Returns how many were requeued.
    pub async fn requeue(&self, filter: &DeadFilter) -> Result<u64, OutboxError> {
        let set = "UPDATE courier_outbox SET status = 'pending', attempts = 0, next_attempt_at_us = NULL";
        Ok(on_db!(self, change_dead(set, filter))?)
    }

    /// Deletes the dead events matching `filter`, giving up on them; aggregates they blocked
    /// resume with their next event. Returns how many were deleted.
    pub async fn discard_dead(&self, filter: &DeadFilter) -> Result<u64, OutboxError> {
        Ok(on_db!(self, change_dead("DELETE FROM courier_outbox", filter))?)
    }

    /// Deletes published rows older than `retention` (by publish time); returns how many.
    pub async fn purge_published(&self, retention: Duration) -> Result<u64, OutboxError> {
        let before_us = now_us() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let deleted = on_db!(self, purge_published(before_us, PURGE_CHUNK))?;
            total += deleted;
            if deleted < PURGE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// A new pool of at most `connections` to the same database, so a relay sharing a process
    /// with the application never queues behind business transactions for a connection. SQLite
    /// keeps its pool: it has one writer anyway, and an in-memory database exists only there.
    /// Connections are not pinged on checkout: that would double the round trips of the relay's
    /// short statements, and a broken connection fails its statement, which the relay retries.
    /// PostgreSQL connections get the relay's planner settings.
    pub(crate) fn dedicated(&self, connections: u32) -> Self {
        macro_rules! fork {
            ($variant:ident, $options:ty, $connect:expr) => {
                Self::$variant(
                    <$options>::new()
                        .max_connections(connections)
                        .test_before_acquire(false)
                        .connect_lazy_with($connect),
                )
            };
        }
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(pool) => fork!(
                Postgres,
                sqlx::postgres::PgPoolOptions,
                pool.connect_options().as_ref().clone().options(crate::sql::postgres::RELAY_SESSION)
            ),
            #[cfg(feature = "mysql")]
            Self::MySql(pool) => {
                fork!(MySql, sqlx::mysql::MySqlPoolOptions, pool.connect_options().as_ref().clone())
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => self.clone(),
        }
    }

    pub(crate) async fn ensure_partitions(&self, count: u32) -> Result<(), OutboxError> {
        let existing = on_db!(self, ensure_partitions(i64::from(count)))?;
        if existing != i64::from(count) {
            return Err(OutboxError::Config(format!(
                "the outbox has {existing} relay partitions but this relay is configured with {count}; \
                 every relay on one database must use the same partition count"
            )));
        }
        Ok(())
    }

    pub(crate) async fn scan_pending(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        on_db!(self, scan_pending(after_id, limit))
    }

    pub(crate) async fn fetch_claimed(&self, query: &ClaimQuery) -> Result<Vec<ClaimedRow>, sqlx::Error> {
        on_db!(self, fetch_claimed(query))
    }

    /// Records publish outcomes: acknowledged rows are kept as published, or deleted when
    /// `delete_published` (retention zero); failed ones get their attempt.
    pub(crate) async fn write(
        &self,
        published: &[i64],
        delete_published: bool,
        failures: &[Failure],
    ) -> Result<(), sqlx::Error> {
        let mark = if delete_published { Mark::Delete } else { Mark::Keep { published_at_us: now_us() } };
        on_db!(self, write(published, mark, failures))
    }

    pub(crate) async fn blocked(
        &self,
        partitions: &[i64],
        count: i64,
    ) -> Result<Vec<BlockedRow>, sqlx::Error> {
        on_db!(self, blocked(partitions, count))
    }

    pub(crate) async fn heartbeat(&self, member: &str, ttl_ms: i64) -> Result<i64, sqlx::Error> {
        on_db!(self, heartbeat(member, ttl_ms))
    }

    pub(crate) async fn renew(&self, owner: &str, ttl_ms: i64) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        on_db!(self, renew(owner, ttl_ms))
    }

    pub(crate) async fn acquire(&self, owner: &str, want: i64, ttl_ms: i64) -> Result<(), sqlx::Error> {
        on_db!(self, acquire(owner, want, ttl_ms))
    }

    pub(crate) async fn release(&self, owner: &str, partitions: &[i64]) -> Result<(), sqlx::Error> {
        on_db!(self, release(owner, partitions))
    }

    pub(crate) async fn leave(&self, member: &str) -> Result<(), sqlx::Error> {
        on_db!(self, leave(member))
    }
}
