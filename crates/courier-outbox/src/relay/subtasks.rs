//! The relay's background tasks (lease keeper, PostgreSQL LISTEN, retention purge) and their
//! supervision: each must run as long as the relay does, so one that ends or panics is reported
//! to the engine instead of vanishing.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::{OutboxError, Store};

/// The relay's background tasks; dropping the set aborts them.
#[derive(Default)]
pub(super) struct Subtasks(JoinSet<Ended>);

/// A background task that stopped, and the panic message if it panicked.
#[derive(Debug)]
pub(super) struct Ended {
    name: &'static str,
    panic: Option<String>,
}

impl Subtasks {
    /// Runs `task` for as long as the relay runs.
    pub(super) fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.0.spawn(async move {
            let panic = AssertUnwindSafe(task)
                .catch_unwind()
                .await
                .err()
                .map(|payload| courier_core::dispatch::panic_message(payload.as_ref()).to_owned());
            Ended { name, panic }
        });
    }

    /// The next task that stopped; pends forever while all run.
    pub(super) async fn next_end(&mut self) -> Ended {
        match self.0.join_next().await {
            Some(Ok(ended)) => ended,
            // Cancelled from outside (the runtime shutting down): as good as stopped.
            Some(Err(err)) => Ended { name: "background", panic: Some(err.to_string()) },
            None => std::future::pending().await,
        }
    }
}

impl Ended {
    /// The error the relay stops with.
    pub(super) fn into_error(self) -> OutboxError {
        let what = match self.panic {
            Some(message) => format!("panicked: {message}"),
            None => "ended".to_owned(),
        };
        tracing::error!(task = self.name, "the relay's {} task {what}; stopping the relay", self.name);
        OutboxError::Stopped(format!("the relay's {} task {what}", self.name))
    }
}

/// On PostgreSQL: wakes the engine on NOTIFY, and records in the database whether the engine is
/// idle (`idle` is true), so that writers notify only then.
#[cfg(feature = "postgres")]
pub(super) fn spawn_listener(
    tasks: &mut Subtasks,
    store: &Store,
    member: &str,
    wake: &Arc<Notify>,
    mut idle: watch::Receiver<bool>,
) {
    let Some(pool) = store.postgres_pool() else { return };
    let (pool, member, wake) = (pool.clone(), member.to_owned(), Arc::clone(wake));
    tasks.spawn("LISTEN", async move {
        loop {
            let Err(err) = listen(&pool, &member, &wake, &mut idle).await;
            tracing::warn!(error = %err, "outbox LISTEN failed; polling until it reconnects");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

#[cfg(feature = "postgres")]
async fn listen(
    pool: &sqlx::PgPool,
    member: &str,
    wake: &Notify,
    idle: &mut watch::Receiver<bool>,
) -> Result<std::convert::Infallible, sqlx::Error> {
    use crate::sql::postgres::{set_listening, NOTIFY_CHANNEL};
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    // Writes the flag again after a reconnect: the last write may have failed.
    idle.mark_changed();
    loop {
        tokio::select! {
            notification = listener.recv() => {
                notification?;
                // Notify keeps one permit, so a burst of commits wakes the relay once.
                wake.notify_one();
            }
            Ok(()) = idle.changed() => {
                let listening = *idle.borrow_and_update();
                set_listening(pool, member, listening).await?;
                if listening {
                    // Rows committed by writers that checked the flag before it was set never
                    // notify: one more claim finds them.
                    wake.notify_one();
                }
            }
        }
    }
}

#[cfg(not(feature = "postgres"))]
pub(super) fn spawn_listener(
    _: &mut Subtasks,
    _: &Store,
    _: &str,
    _: &Arc<Notify>,
    _: watch::Receiver<bool>,
) {
}

pub(super) async fn purge_loop(store: Store, retention: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match store.purge_published(retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "purged published outbox rows"),
            Err(err) => tracing::warn!(error = %err, "purging published outbox rows failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_reported_with_its_name_and_message() {
        let mut tasks = Subtasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("lease keeper", async { panic!("period must be non-zero") });
        let error = tasks.next_end().await.into_error();
        assert_eq!(
            error.to_string(),
            "the relay stopped abnormally: the relay's lease keeper task panicked: period must be non-zero"
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_is_reported_too() {
        let mut tasks = Subtasks::default();
        tasks.spawn("LISTEN", async {});
        assert_eq!(
            tasks.next_end().await.into_error().to_string(),
            "the relay stopped abnormally: the relay's LISTEN task ended"
        );
    }
}
