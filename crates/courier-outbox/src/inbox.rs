//! Idempotent consumers: the inbox records, in the transaction of a handler's effect, which
//! events a consumer has processed, so that an event delivered again changes nothing.
//!
//! Delivery is at least once: a relay that crashed between the broker's ACK and its mark
//! publishes the event again, and a consumer that fails to acknowledge gets it again. An inbox row
//! `(consumer, event_id)` inserted in the same transaction as the business change makes the
//! *effect* happen once: the transaction commits both or neither, and the table's primary key
//! lets only one transaction insert the row. A second delivery, even one handled at the same
//! moment on another connection, waits for the first's transaction and, once it has committed,
//! finds the row and is skipped; if it rolled back, the second one runs.
//!
//! [`Inbox::record`] is the building block for a transaction of your own; [`Inbox::handler`]
//! wraps a handler for [`courier_core::dispatch::dispatch`] so that it runs in a transaction
//! that also records the event. Rows are kept until [`Store::purge_inbox`] deletes them.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use courier_core::dispatch::Handler;
use courier_core::{Envelope, EventId, HandlerError, ValidationError};

use crate::row::now_us;
use crate::sql::sealed::Sealed;
use crate::{OutboxError, Store, StoreTransaction};

/// Longest consumer name, in characters (the column is `VARCHAR(255)` on MySQL).
const MAX_CONSUMER_LEN: usize = 255;

/// The processed events of one consumer, in the `courier_inbox` table that [`Store::migrate`]
/// creates. Cheap to clone.
///
/// Keep rows longer than the broker may deliver an event again (JetStream's `max_age`, Kafka's
/// retention if consumers may rewind): [`Store::purge_inbox`] deletes older ones, and an event
/// delivered after its row was purged is processed again.
///
/// In a transaction of your own, record the event first, then apply the effect only if it is
/// new. Recording first also makes a concurrent copy of the event wait here, before any effect:
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn example(pool: sqlx::PgPool, event: courier_core::Envelope) -> Result<(), courier_outbox::OutboxError> {
/// use courier_outbox::{Inbox, Recorded};
///
/// let inbox = Inbox::new("billing")?;
/// let mut tx = pool.begin().await?;
/// if inbox.record(&mut *tx, event.event_id()).await? == Recorded::New {
///     sqlx::query("UPDATE accounts SET balance = balance + 42 WHERE id = 7").execute(&mut *tx).await?;
/// }
/// tx.commit().await?; // the effect and the inbox row commit together, or neither does
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbox {
    consumer: Arc<str>,
}

/// Whether [`Inbox::record`] saw the event for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Recorded {
    /// Not processed before: apply the effect in the same transaction. The inbox row commits
    /// with it; a rollback forgets both, so a redelivery is processed again.
    New,
    /// Processed before by this consumer (its transaction committed): skip the effect.
    AlreadyProcessed,
}

impl Inbox {
    /// The inbox of `consumer`: a name of 1 to 255 characters, the same in every instance of the
    /// consumer (e.g. its consumer group). Consumers with different names each process an event
    /// once.
    pub fn new(consumer: impl Into<String>) -> Result<Self, ValidationError> {
        let consumer = consumer.into();
        if consumer.trim().is_empty() || consumer.chars().count() > MAX_CONSUMER_LEN {
            return Err(ValidationError::new("consumer", "must have 1 to 255 characters"));
        }
        Ok(Self { consumer: consumer.into() })
    }

    /// The consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Records that this consumer processes `event_id`, on `conn`: pass the transaction of the
    /// effect (`&mut *tx`) and call it before the effect. Returns [`Recorded::New`] the first
    /// time, [`Recorded::AlreadyProcessed`] once a transaction that recorded it has committed.
    /// While another transaction holds the same event uncommitted, this waits for its outcome.
    pub async fn record<C: InboxConnection>(
        &self,
        conn: &mut C,
        event_id: EventId,
    ) -> Result<Recorded, OutboxError> {
        let new = conn.record_processed(&self.consumer, event_id.to_string(), now_us()).await?;
        Ok(if new { Recorded::New } else { Recorded::AlreadyProcessed })
    }

    /// Wraps `handler` for [`dispatch`](courier_core::dispatch::dispatch) so that each event's
    /// effects happen once: every delivery begins a transaction on `pool` and records the event
    /// in it; a new event runs `handler` with the transaction, which it returns to be committed
    /// (an error or a panic rolls back the effects and the inbox row, and the dispatch engine
    /// retries or dead-letters as usual); an event already processed is acknowledged without
    /// running `handler`. Effects outside the transaction (an HTTP call) are not covered.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn example(
    /// #     pool: sqlx::PgPool,
    /// #     deliveries: impl futures::Stream<Item = courier_core::memory::MemoryDelivery> + Send,
    /// #     dead_letters: courier_core::DeadLetterTopic<courier_core::memory::MemoryTransport>,
    /// # ) -> Result<(), courier_outbox::OutboxError> {
    /// use courier_core::dispatch::{dispatch, DispatchConfig};
    /// use courier_outbox::{Inbox, OutboxError};
    ///
    /// let handler = Inbox::new("billing")?.handler(pool, |mut tx, event| async move {
    ///     sqlx::query("UPDATE invoices SET paid = true WHERE order_id = $1")
    ///         .bind(event.aggregate_id())
    ///         .execute(&mut *tx)
    ///         .await?;
    ///     Ok::<_, OutboxError>(tx)
    /// });
    /// dispatch(deliveries, handler, dead_letters, DispatchConfig::default(), std::future::pending()).await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// `handler`'s error is anything that converts into a [`HandlerError`]: an
    /// [`OutboxError`] (which a `sqlx::Error` converts into with `?`) is retried when a retry
    /// may help (a lost connection, a deadlock, a serialization failure, a lock wait that timed
    /// out, SQLite busy) and dead-lettered otherwise; return a [`HandlerError`] to decide.
    pub fn handler<P, F, Fut, E>(self, pool: P, handler: F) -> InboxHandler<P, F>
    where
        P: InboxPool,
        F: Fn(P::Transaction, Envelope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<P::Transaction, E>> + Send,
        E: Into<HandlerError>,
    {
        InboxHandler { inbox: self, pool, handler }
    }
}

/// A connection the inbox can record on: [`sqlx::PgConnection`], [`sqlx::MySqlConnection`] or
/// [`sqlx::SqliteConnection`] (each behind its cargo feature; a sqlx transaction dereferences to
/// one, so pass `&mut *tx`), or a [`StoreTransaction`].
pub trait InboxConnection: Send + Sealed {
    #[doc(hidden)]
    fn record_processed(
        &mut self,
        consumer: &str,
        event_id: String,
        at_us: i64,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
}

macro_rules! inbox_connection {
    ($feature:literal, $connection:ty, $database:ty) => {
        #[cfg(feature = $feature)]
        impl InboxConnection for $connection {
            fn record_processed(
                &mut self,
                consumer: &str,
                event_id: String,
                at_us: i64,
            ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
                crate::sql::inbox::record::<$database>(self, consumer, event_id, at_us)
            }
        }
    };
}

inbox_connection!("postgres", sqlx::PgConnection, sqlx::Postgres);
inbox_connection!("mysql", sqlx::MySqlConnection, sqlx::MySql);
inbox_connection!("sqlite", sqlx::SqliteConnection, sqlx::Sqlite);

/// Where [`Inbox::handler`] begins its transactions: a sqlx pool ([`sqlx::PgPool`],
/// [`sqlx::MySqlPool`], [`sqlx::SqlitePool`]), whose handlers get a `sqlx::Transaction`, or a
/// [`Store`], whose handlers get a [`StoreTransaction`].
pub trait InboxPool: Send + Sync + 'static + Sealed {
    /// The transaction the wrapped handler receives and returns.
    type Transaction: Send + 'static;

    #[doc(hidden)]
    fn begin(&self) -> impl Future<Output = Result<Self::Transaction, OutboxError>> + Send;

    #[doc(hidden)]
    fn record<'a>(
        tx: &'a mut Self::Transaction,
        inbox: &'a Inbox,
        event_id: EventId,
    ) -> impl Future<Output = Result<Recorded, OutboxError>> + Send + 'a;

    #[doc(hidden)]
    fn commit(tx: Self::Transaction) -> impl Future<Output = Result<(), OutboxError>> + Send;

    #[doc(hidden)]
    fn rollback(tx: Self::Transaction) -> impl Future<Output = Result<(), OutboxError>> + Send;
}

impl<DB: sqlx::Database> Sealed for sqlx::Pool<DB> {}

impl<DB> InboxPool for sqlx::Pool<DB>
where
    DB: sqlx::Database,
    DB::Connection: InboxConnection,
{
    type Transaction = sqlx::Transaction<'static, DB>;

    async fn begin(&self) -> Result<Self::Transaction, OutboxError> {
        Ok(sqlx::Pool::begin(self).await?)
    }

    fn record<'a>(
        tx: &'a mut Self::Transaction,
        inbox: &'a Inbox,
        event_id: EventId,
    ) -> impl Future<Output = Result<Recorded, OutboxError>> + Send + 'a {
        inbox.record(&mut **tx, event_id)
    }

    async fn commit(tx: Self::Transaction) -> Result<(), OutboxError> {
        Ok(tx.commit().await?)
    }

    async fn rollback(tx: Self::Transaction) -> Result<(), OutboxError> {
        Ok(tx.rollback().await?)
    }
}

impl Sealed for Store {}

impl InboxPool for Store {
    type Transaction = StoreTransaction;

    fn begin(&self) -> impl Future<Output = Result<StoreTransaction, OutboxError>> + Send {
        Store::begin(self)
    }

    fn record<'a>(
        tx: &'a mut StoreTransaction,
        inbox: &'a Inbox,
        event_id: EventId,
    ) -> impl Future<Output = Result<Recorded, OutboxError>> + Send + 'a {
        inbox.record(tx, event_id)
    }

    fn commit(tx: StoreTransaction) -> impl Future<Output = Result<(), OutboxError>> + Send {
        tx.commit()
    }

    fn rollback(tx: StoreTransaction) -> impl Future<Output = Result<(), OutboxError>> + Send {
        tx.rollback()
    }
}

/// A [`Handler`] whose effects happen once per event and consumer; made by [`Inbox::handler`].
pub struct InboxHandler<P, F> {
    inbox: Inbox,
    pool: P,
    handler: F,
}

impl<P, F> fmt::Debug for InboxHandler<P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxHandler").field("inbox", &self.inbox).finish_non_exhaustive()
    }
}

impl<P, F, Fut, E> Handler for InboxHandler<P, F>
where
    P: InboxPool,
    F: Fn(P::Transaction, Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<P::Transaction, E>> + Send,
    E: Into<HandlerError>,
{
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await?;
        if P::record(&mut tx, &self.inbox, envelope.event_id()).await? == Recorded::AlreadyProcessed {
            tracing::debug!(
                consumer = self.inbox.consumer(),
                event_id = %envelope.event_id(),
                "event already processed; acknowledged without running the handler"
            );
            P::rollback(tx).await?;
            return Ok(());
        }
        let tx = (self.handler)(tx, envelope.clone()).await.map_err(Into::into)?;
        // A commit whose outcome is unknown (the connection dropped) fails the attempt; if it did
        // commit, the retry finds the inbox row and the effect is still applied once.
        P::commit(tx).await?;
        Ok(())
    }
}

impl From<OutboxError> for HandlerError {
    /// Retryable when [`OutboxError::is_retryable`] or the database reports a conflict between
    /// transactions that a retry resolves (see [`Inbox::handler`]); permanent otherwise.
    fn from(error: OutboxError) -> Self {
        let conflict = match &error {
            OutboxError::Database(sqlx::Error::Database(db)) => is_transaction_conflict(db.as_ref()),
            _ => false,
        };
        if error.is_retryable() || conflict {
            HandlerError::retryable(error.to_string())
        } else {
            HandlerError::permanent(error.to_string())
        }
    }
}

/// Whether the database aborted a statement because of another transaction, so that running
/// the transaction again may succeed: a serialization failure or deadlock (SQLSTATE 40001,
/// 40P01; MySQL errors 1213), a lock wait that timed out (PostgreSQL 55P03, MySQL 1205), or
/// SQLite busy or locked (primary result codes 5 and 6, also as extended codes).
fn is_transaction_conflict(error: &dyn sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "postgres")]
    if let Some(pg) = error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return matches!(pg.code(), "40001" | "40P01" | "55P03");
    }
    #[cfg(feature = "mysql")]
    if let Some(mysql) = error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(mysql.number(), 1205 | 1213);
    }
    #[cfg(feature = "sqlite")]
    if error.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return error.code().is_some_and(|code| sqlite_busy(&code));
    }
    let _ = error; // without a database feature no error is a conflict
    false
}

/// Whether SQLite's (extended) result code `code` is SQLITE_BUSY or SQLITE_LOCKED.
#[cfg(any(feature = "sqlite", test))]
fn sqlite_busy(code: &str) -> bool {
    code.parse::<i32>().is_ok_and(|code| matches!(code & 0xff, 5 | 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_have_1_to_255_characters() {
        assert_eq!(Inbox::new("billing").unwrap().consumer(), "billing");
        assert!(Inbox::new("é".repeat(255)).is_ok(), "characters, not bytes");
        for bad in [String::new(), "  ".into(), "x".repeat(256)] {
            let err = Inbox::new(bad).unwrap_err();
            assert_eq!(err.field, "consumer", "{err}");
        }
    }

    #[test]
    fn sqlite_busy_and_locked_are_conflicts_also_as_extended_codes() {
        // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_BUSY_SNAPSHOT (517), SQLITE_LOCKED_SHAREDCACHE (262)
        for code in ["5", "6", "517", "262"] {
            assert!(sqlite_busy(code), "{code}");
        }
        // SQLITE_CONSTRAINT_PRIMARYKEY (1555), SQLITE_CONSTRAINT (19), SQLITE_IOERR (10)
        for code in ["1555", "19", "10", "not a number"] {
            assert!(!sqlite_busy(code), "{code}");
        }
    }

    #[test]
    fn outbox_errors_become_retryable_handler_errors_when_a_retry_may_help() {
        let lost = OutboxError::Database(sqlx::Error::PoolTimedOut);
        assert!(HandlerError::from(lost).is_retryable());
        let invalid = OutboxError::Config("no such table".into());
        let error = HandlerError::from(invalid);
        assert!(!error.is_retryable());
        assert!(error.message().contains("no such table"), "{}", error.message());
    }
}
