//! The lease keeper: renews this relay's partition leases, takes its fair share of partitions,
//! hands surplus partitions back (after the engine drained them), and tells the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use crate::{OutboxError, Store};

/// What the keeper tells the engine.
#[derive(Debug)]
pub(crate) enum LeaseEvent {
    /// A renewal that started at this instant succeeded: every lease this relay holds lasts
    /// at least `lease_ttl` past it. Sent before the other events of the same renewal.
    Renewed(Instant),
    /// Newly leased partitions; the engine reads their blocked aggregates before working on them.
    Acquired(Vec<i64>),
    /// Partitions whose lease is gone (taken over, or not renewable in time): stop at once.
    Lost(Vec<i64>),
    /// Operators requeued or discarded dead rows: re-read the blocked aggregates.
    Changed(Vec<i64>),
    /// Surplus partitions to hand over: finish their in-flight events, then answer `Released`.
    Release(Vec<i64>),
}

/// What the engine tells the keeper.
#[derive(Debug)]
pub(crate) enum KeeperCommand {
    /// These partitions have nothing in flight or unmarked any more.
    Released(Vec<i64>),
    /// Release every lease except those of `keep` and leave; answers when done. Kept leases
    /// (partitions with events still on their way to the broker) expire on their own, after
    /// those events had their verdict.
    Shutdown { keep: Vec<i64>, done: oneshot::Sender<()> },
}

/// Refuses to start a relay whose instance id a running relay already uses: both would hold
/// the same leases and publish the same events at once. A heartbeat of that id that is still
/// fresh may also be this relay's own predecessor, killed without leaving, so it waits for the
/// heartbeat to expire, and refuses only if it is renewed meanwhile. (Two relays that start at
/// the same moment with one id both find no heartbeat: ids are for telling relays apart, and the
/// default one is random.)
pub(crate) async fn refuse_a_live_namesake(
    store: &Store,
    owner: &str,
    ttl: Duration,
) -> Result<(), OutboxError> {
    let fresh = |left: Option<i64>| left.filter(|&ms| ms > 0).map(|ms| Duration::from_millis(ms as u64));
    let Some(left) = fresh(store.heartbeat_left_ms(owner).await?) else { return Ok(()) };
    tracing::info!(owner, wait = ?left, "a heartbeat of this relay's instance id is fresh; waiting for it to expire");
    tokio::time::sleep(left.min(ttl * 2) + Duration::from_millis(100)).await;
    match fresh(store.heartbeat_left_ms(owner).await?) {
        None => Ok(()),
        Some(_) => Err(OutboxError::Config(format!(
            "another relay with instance_id {owner:?} is running (its heartbeat was renewed while this one \
             waited); give each relay its own instance_id"
        ))),
    }
}

pub(crate) struct Keeper {
    pub(crate) store: Store,
    pub(crate) owner: String,
    pub(crate) partitions: u32,
    pub(crate) ttl: Duration,
    pub(crate) renew_interval: Duration,
    pub(crate) events: mpsc::UnboundedSender<LeaseEvent>,
    pub(crate) commands: mpsc::UnboundedReceiver<KeeperCommand>,
}

struct State {
    /// Partition → lease version, as last renewed.
    owned: BTreeMap<i64, i64>,
    /// Owned partitions handed to the engine to drain.
    releasing: BTreeSet<i64>,
    /// When the last successful renewal started: the database lease lasts at least `ttl` past it.
    renewed_at: Option<Instant>,
}

impl Keeper {
    pub(crate) async fn run(mut self) {
        let mut state = State { owned: BTreeMap::new(), releasing: BTreeSet::new(), renewed_at: None };
        let mut tick = tokio::time::interval(self.renew_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick(&mut state).await,
                command = self.commands.recv() => match command {
                    Some(KeeperCommand::Released(partitions)) => {
                        if let Err(err) = self.store.release(&self.owner, &partitions).await {
                            // The lease then simply expires.
                            tracing::warn!(owner = %self.owner, error = %err, "releasing drained partitions failed");
                        }
                        for p in &partitions {
                            state.owned.remove(p);
                            state.releasing.remove(p);
                        }
                    }
                    Some(KeeperCommand::Shutdown { keep, done }) => {
                        let all: Vec<i64> = state.owned.keys().filter(|p| !keep.contains(p)).copied().collect();
                        if !all.is_empty() {
                            if let Err(err) = self.store.release(&self.owner, &all).await {
                                tracing::warn!(owner = %self.owner, error = %err, "releasing leases at shutdown failed");
                            }
                        }
                        if let Err(err) = self.store.leave(&self.owner).await {
                            tracing::warn!(owner = %self.owner, error = %err, "leaving the relay group failed");
                        }
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
            }
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    async fn tick(&self, state: &mut State) {
        let started = Instant::now();
        // A hung database must count as a failed renewal, or the fence below would never run.
        let renewed = tokio::time::timeout(self.ttl / 4, self.renew_and_balance(state)).await;
        match renewed.unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut)) {
            Ok(owned) => {
                state.renewed_at = Some(started);
                let _ = self.events.send(LeaseEvent::Renewed(started));
                self.apply(state, owned);
            }
            Err(err) => {
                tracing::warn!(owner = %self.owner, error = %err, "renewing outbox leases failed");
                // Stop before the database lease can expire under us (renewals lag by up to a
                // tick), so no other relay ever publishes the same partition at the same time.
                // Renewals start at most `renew_interval` apart and give up after ttl/4, so with
                // `renew_interval <= ttl/5` this fires before ttl has passed since the last success.
                let deadline = self.ttl / 2;
                if state.renewed_at.is_some_and(|at| at.elapsed() >= deadline) && !state.owned.is_empty() {
                    let lost: Vec<i64> = state.owned.keys().copied().collect();
                    state.owned.clear();
                    state.releasing.clear();
                    let _ = self.events.send(LeaseEvent::Lost(lost));
                }
            }
        }
    }

    async fn renew_and_balance(&self, state: &mut State) -> Result<BTreeMap<i64, i64>, sqlx::Error> {
        let live = self.store.heartbeat(&self.owner, self.ttl_ms()).await?.max(1);
        let target = (i64::from(self.partitions) + live - 1) / live;
        let mut owned: BTreeMap<i64, i64> =
            self.store.renew(&self.owner, self.ttl_ms()).await?.into_iter().collect();
        let working = owned.keys().filter(|p| !state.releasing.contains(p)).count() as i64;
        if working < target {
            self.store.acquire(&self.owner, target - working, self.ttl_ms()).await?;
            owned = self.store.renew(&self.owner, self.ttl_ms()).await?.into_iter().collect();
        } else if working > target {
            let surplus: Vec<i64> = owned
                .keys()
                .rev()
                .filter(|p| !state.releasing.contains(p))
                .take((working - target) as usize)
                .copied()
                .collect();
            state.releasing.extend(&surplus);
            let _ = self.events.send(LeaseEvent::Release(surplus));
        }
        Ok(owned)
    }

    fn apply(&self, state: &mut State, owned: BTreeMap<i64, i64>) {
        let acquired: Vec<i64> = owned.keys().filter(|p| !state.owned.contains_key(p)).copied().collect();
        let lost: Vec<i64> = state.owned.keys().filter(|p| !owned.contains_key(p)).copied().collect();
        let changed: Vec<i64> = owned
            .iter()
            .filter(|(p, version)| state.owned.get(p).is_some_and(|old| old != *version))
            .map(|(p, _)| *p)
            .collect();
        for p in &lost {
            state.releasing.remove(p);
        }
        state.owned = owned;
        for (event, partitions) in [
            (LeaseEvent::Lost as fn(_) -> _, lost),
            (LeaseEvent::Acquired, acquired),
            (LeaseEvent::Changed, changed),
        ] {
            if !partitions.is_empty() {
                let _ = self.events.send(event(partitions));
            }
        }
    }
}
