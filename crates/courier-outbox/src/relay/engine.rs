//! The relay's main task: claims rows, publishes them one in flight per aggregate, feeds ACKs
//! back into batched marks, parks failed aggregates, and follows the lease keeper.
//!
//! Database work (claim, mark, blocked-aggregate scan) runs as at most one future of each kind
//! polled by this task, so claims and marks overlap with publishing without extra tasks, and the
//! state below needs no locks.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Error, EventId, EventIdMap, PublishResult, Publisher, Transport};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use super::aggregate::{Aggregate, Park};
use super::cursor::Cursor;
use super::fencing::PublishFence;
use super::lease::{Keeper, KeeperCommand, LeaseEvent};
use super::partitions::Partitions;
use super::refused::Refused;
use super::submit::{self, Submission, Unsubmitted};
use super::subtasks::{self, Subtasks};
use super::sweep::Sweep;
use super::{AckedEvent, Counters, FailedEvent, RelayConfig, RelayObserver};
use crate::row::{now_us, shard_of, ClaimedRow};
use crate::sql::{BlockedRow, ClaimQuery, Failure, OwnerCheck, MAX_ERROR_LEN};
use crate::{OutboxError, Store};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// A finished outcome write: the rows it covered and whether it committed.
type WriteDone = (Vec<i64>, Vec<Failure>, Result<(), sqlx::Error>);
/// A finished blocked-aggregate scan of some partitions, with the count of outcome writes that
/// had committed when it started (see [`Park::recorded`]).
type ScanDone = (Vec<i64>, u64, Result<Vec<BlockedRow>, sqlx::Error>);

/// How long to wait before retrying a database operation that failed.
const DB_RETRY: Duration = Duration::from_millis(500);
/// How often to re-check a retry whose failure record is not written yet.
const UNPARK_RECHECK: Duration = Duration::from_millis(20);

pub(crate) async fn run<T: Transport>(
    store: Store,
    publisher: Publisher<T>,
    config: RelayConfig,
    observer: Arc<dyn RelayObserver>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), OutboxError> {
    config.validate_with(publisher.verdict_timeout())?;
    store.ensure_partitions(config.partitions).await?;
    super::lease::refuse_a_live_namesake(&store, &config.instance_id, config.lease_ttl).await?;
    let mut results = publisher.results().expect("a fresh publisher has its results stream");
    // Subtasks die with this task (dropping the set aborts them), also when the relay is aborted.
    let mut tasks = Subtasks::default();
    let (lease_tx, mut lease_rx) = mpsc::unbounded_channel();
    let (keeper_tx, keeper_rx) = mpsc::unbounded_channel();
    tasks.spawn(
        "lease keeper",
        Keeper {
            // Renewals must not queue for a connection behind claims and marks, which may wait
            // on a lock of the outbox table for longer than the lease.
            store: store.dedicated(1),
            owner: config.instance_id.clone(),
            partitions: config.partitions,
            ttl: config.lease_ttl,
            renew_interval: config.lease_renew_interval,
            events: lease_tx,
            commands: keeper_rx,
        }
        .run(),
    );
    let wake = Arc::new(Notify::new());
    let (idle_tx, idle_rx) = watch::channel(false);
    if config.listen {
        subtasks::spawn_listener(&mut tasks, &store, &config.instance_id, &wake, idle_rx);
    }
    // At zero the marks delete acknowledged rows themselves: nothing is left to purge.
    if let Some(retention) = config.retention.filter(|r| !r.is_zero()) {
        tasks.spawn("retention purge", subtasks::purge_loop(store.clone(), retention, config.purge_interval));
    }

    let (submit_tx, submit_rx) = mpsc::unbounded_channel();
    let (unsubmitted_tx, mut unsubmitted_rx) = mpsc::unbounded_channel();
    tasks.spawn("publishing", submit::submit_loop(publisher.clone(), submit_rx, unsubmitted_tx));
    let fence = PublishFence::new(config.lease_ttl, publisher.verdict_timeout());
    let mut engine =
        Engine::new(store, submit_tx, fence, config, observer, counters, keeper_tx.clone(), idle_tx);
    let mut claim: Option<BoxFuture<ClaimStep>> = None;
    let mut write: Option<BoxFuture<WriteDone>> = None;
    let mut scan: Option<BoxFuture<ScanDone>> = None;
    let mut stop_deadline: Option<Instant> = None;
    loop {
        let now = Instant::now();
        engine.dispatch(now);
        engine.update_idle(now);
        if claim.is_none() && engine.should_claim(now) {
            claim = Some(engine.start_claim(now));
        }
        if write.is_none() && now >= engine.write_retry_at {
            write = engine.start_write();
        }
        if scan.is_none() && now >= engine.scan_retry_at {
            scan = engine.start_scan();
        }
        if let Some(deadline) = stop_deadline {
            let drained = engine.in_flight.is_empty() && write.is_none() && engine.writes_empty();
            if drained || now >= deadline {
                if !drained {
                    tracing::warn!(
                        in_flight = engine.in_flight.len(),
                        "relay shutdown timed out; unacknowledged rows stay pending for the next relay, \
                         and the leases of their partitions expire instead of being released"
                    );
                }
                break;
            }
        }
        let timer = engine.next_timer(now, stop_deadline);
        tokio::select! {
            Some(result) = results.next() => engine.on_result(result),
            Some((event_id, why)) = unsubmitted_rx.recv() => engine.on_unsubmitted(event_id, why),
            step = poll_slot(&mut claim) => claim = engine.on_claim_step(step),
            (published, failures, outcome) = poll_slot(&mut write) => {
                write = None;
                engine.on_written(published, failures, outcome, claim.is_some());
            }
            (partitions, started_after, outcome) = poll_slot(&mut scan) => {
                scan = None;
                engine.on_scanned(partitions, started_after, outcome);
            }
            Some(event) = lease_rx.recv() => engine.on_lease(event),
            // A subtask never ends on its own: without it the relay would go on silently idle
            // (no leases) or blind (no wake-ups, no purge). Stop loudly instead.
            ended = tasks.next_end() => return Err(ended.into_error()),
            () = wake.notified() => engine.cursor.wake_pending = true,
            () = tokio::time::sleep_until(timer) => engine.on_timer(),
            _ = stop.changed(), if stop_deadline.is_none() => {
                stop_deadline = Some(Instant::now() + engine.config.drain_timeout);
                engine.stop();
            }
        }
    }
    let (done_tx, done_rx) = oneshot::channel();
    let keep = engine.partitions_in_flight();
    if keeper_tx.send(KeeperCommand::Shutdown { keep, done: done_tx }).is_ok() {
        let _ = done_rx.await;
    }
    publisher.close().await?;
    Ok(())
}

/// Polls an optional in-progress database operation; pends forever when there is none.
async fn poll_slot<T>(slot: &mut Option<BoxFuture<T>>) -> T {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// The two database steps of a claim.
/// `from` is the id the claim read after: a discarded claim moves the cursor back there.
enum ClaimStep {
    Scanned { reader: Reader, from: i64, ids: Result<Vec<(i64, i64)>, sqlx::Error>, limit: usize },
    Fetched { reader: Reader, from: i64, rows: Result<Vec<ClaimedRow>, sqlx::Error> },
}

/// Whom a claim reads for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reader {
    /// The main cursor, at the epoch the claim started in.
    Cursor { epoch: u64 },
    /// The sweep's walk, which no rewind discards.
    Sweep,
}

struct InFlight {
    row_id: i64,
    aggregate: Arc<str>,
    attempts: i64,
    created_at_us: i64,
}

struct Engine {
    store: Store,
    /// Hands events to the publishing task ([`submit::submit_loop`]).
    submissions: mpsc::UnboundedSender<Submission>,
    fence: PublishFence,
    config: RelayConfig,
    observer: Arc<dyn RelayObserver>,
    counters: Arc<Counters>,
    keeper: mpsc::UnboundedSender<KeeperCommand>,
    partition_count: i64,
    partitions: Partitions,
    aggregates: HashMap<Arc<str>, Aggregate>,
    /// Aggregates with a publishable head row.
    ready: VecDeque<Arc<str>>,
    in_flight: EventIdMap<EventId, InFlight>,
    /// Rows in memory: queued, in flight, or with an outcome not yet written. Row id → partition.
    known: HashMap<i64, i64>,
    queued: usize,
    /// Retry deadlines of parked aggregates (stale entries are skipped).
    timers: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    /// Where claims read from and when the next is due.
    cursor: Cursor,
    /// The periodic walk from the oldest pending row, beside the cursor.
    sweep: Sweep,
    /// Rows of parked aggregates that claims skip until the park is lifted.
    refused: Refused,
    /// Whether the relay is idle, for the NOTIFY listener.
    idle: watch::Sender<bool>,
    published: Vec<i64>,
    failures: Vec<Failure>,
    write_retry_at: Instant,
    scan_retry_at: Instant,
    /// Outcome writes committed so far; orders dead parks against scans.
    writes_done: u64,
    /// Written rows to forget once the claim in progress (which may predate the write) is done.
    forget_later: Vec<i64>,
    stopping: bool,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: Store,
        submissions: mpsc::UnboundedSender<Submission>,
        fence: PublishFence,
        config: RelayConfig,
        observer: Arc<dyn RelayObserver>,
        counters: Arc<Counters>,
        keeper: mpsc::UnboundedSender<KeeperCommand>,
        idle: watch::Sender<bool>,
    ) -> Self {
        let now = Instant::now();
        Self {
            store,
            submissions,
            fence,
            partition_count: i64::from(config.partitions),
            cursor: Cursor::new(&config, now),
            sweep: Sweep::new(config.sweep_interval, now),
            config,
            observer,
            counters,
            keeper,
            partitions: Partitions::default(),
            aggregates: HashMap::new(),
            ready: VecDeque::new(),
            in_flight: EventIdMap::default(),
            known: HashMap::new(),
            queued: 0,
            timers: BinaryHeap::new(),
            refused: Refused::default(),
            idle,
            published: Vec::new(),
            failures: Vec::new(),
            write_retry_at: now,
            scan_retry_at: now,
            writes_done: 0,
            forget_later: Vec::new(),
            stopping: false,
        }
    }

    /// The database-side lease check of this relay's reads and writes.
    fn owner_check(&self) -> OwnerCheck {
        OwnerCheck { owner: self.config.instance_id.clone(), partition_count: self.partition_count }
    }

    fn writes_empty(&self) -> bool {
        self.published.is_empty() && self.failures.is_empty()
    }

    fn should_claim(&self, now: Instant) -> bool {
        !self.stopping
            && self.partitions.active_count() > 0
            && self.queued < self.config.batch_size
            && (self.cursor.due(now) || self.sweep.walking())
    }

    /// Publishes idle/busy transitions to the NOTIFY listener (a read lock when nothing changed,
    /// as this runs on every turn of the loop).
    fn update_idle(&self, now: Instant) {
        let idle = self.cursor.is_idle(now) && !self.stopping;
        if *self.idle.borrow() != idle {
            self.idle.send_replace(idle);
        }
    }

    /// Starts a claim: scan the next pending ids, then fetch the rows this relay should take.
    fn start_claim(&mut self, now: Instant) -> BoxFuture<ClaimStep> {
        let (reader, after_id) = match self.sweep.take_turn(self.cursor.due(now)) {
            Some(after_id) => (Reader::Sweep, after_id),
            None => (Reader::Cursor { epoch: self.cursor.epoch }, self.cursor.start(now)),
        };
        // Other relays' rows are skipped, so scan proportionally further.
        let share = (self.partition_count as usize / self.partitions.active_count().max(1)).clamp(1, 10);
        let limit = (self.config.batch_size * share) as i64;
        let store = self.store.clone();
        Box::pin(async move {
            let ids = store.scan_pending(after_id, limit).await;
            ClaimStep::Scanned { reader, from: after_id, ids, limit: limit as usize }
        })
    }

    /// Advances a claim; returns its next step, or `None` when it is complete.
    fn on_claim_step(&mut self, step: ClaimStep) -> Option<BoxFuture<ClaimStep>> {
        let next = match step {
            ClaimStep::Scanned { reader, from, ids: Err(err), .. }
            | ClaimStep::Fetched { reader, from, rows: Err(err), .. } => {
                tracing::warn!(error = %err, "claiming outbox rows failed");
                // Its rows were never taken: re-read them at the next poll, or the next sweep.
                match reader {
                    Reader::Cursor { .. } => self.cursor.failed(from),
                    Reader::Sweep => self.sweep.failed(),
                }
                None
            }
            ClaimStep::Scanned { reader: Reader::Cursor { epoch }, from, .. }
            | ClaimStep::Fetched { reader: Reader::Cursor { epoch }, from, .. }
                if epoch != self.cursor.epoch =>
            {
                if let ClaimStep::Fetched { rows: Ok(rows), .. } = &step {
                    // Refusing needs no order: a fetch slower than the interval between rewinds
                    // would otherwise fetch a parked backlog for ever.
                    for row in rows {
                        self.refuse_if_parked(row);
                    }
                }
                // Its rows were never taken: they must be read again, not left behind the cursor.
                self.cursor.discarded(from);
                None
            }
            ClaimStep::Scanned { reader, from, ids: Ok(ids), limit } => {
                self.choose(reader, from, &ids, limit)
            }
            ClaimStep::Fetched { rows: Ok(rows), .. } => {
                for row in rows {
                    self.accept(row);
                }
                None
            }
        };
        if next.is_none() {
            // Only now: this claim may have read those rows before their mark committed.
            for id in std::mem::take(&mut self.forget_later) {
                self.known.remove(&id);
            }
            self.check_drained();
        }
        next
    }

    /// Picks, from scanned `(id, shard)` pairs, up to a batch of rows in active partitions that
    /// are not in memory yet nor refused for a park that still holds, and starts fetching them.
    fn choose(
        &mut self,
        reader: Reader,
        from: i64,
        ids: &[(i64, i64)],
        limit: usize,
    ) -> Option<BoxFuture<ClaimStep>> {
        let mut wanted = Vec::new();
        let mut reached = None;
        for &(id, shard) in ids {
            let wants = self.partitions.is_active(shard % self.partition_count)
                && !self.known.contains_key(&id)
                && !self.refused.contains(id);
            if wants {
                wanted.push(id);
            }
            reached = Some(id);
            if wanted.len() == self.config.batch_size {
                break;
            }
        }
        let full = wanted.len() == self.config.batch_size;
        match reader {
            Reader::Cursor { .. } => {
                self.cursor.scanned(ids.len(), limit, ids.last().map(|&(last, _)| last));
                if let Some(id) = reached {
                    self.cursor.passed(id, full);
                }
            }
            Reader::Sweep => self.sweep.scanned(reached, full || ids.len() == limit),
        }
        if wanted.is_empty() {
            return None;
        }
        self.cursor.found_new_rows(Instant::now());
        let query = ClaimQuery { ids: wanted, owner: self.owner_check() };
        let store = self.store.clone();
        Some(Box::pin(
            async move { ClaimStep::Fetched { reader, from, rows: store.fetch_claimed(&query).await } },
        ))
    }

    fn accept(&mut self, row: ClaimedRow) {
        let partition = row.shard % self.partition_count;
        if self.known.contains_key(&row.id) || !self.partitions.is_active(partition) {
            return;
        }
        if self.refuse_if_parked(&row) {
            return;
        }
        let key = Arc::clone(&row.aggregate_id);
        let aggregate = self.aggregates.entry(Arc::clone(&key)).or_insert_with(|| Aggregate::new(partition));
        // Every older pending row of the aggregate must be in memory already. Checking the one
        // just before suffices: it passed the same check when it was taken. (Checking the oldest
        // does not: it may be in memory, published with its mark not yet committed, while a row
        // between it and this one was never read.)
        if let Some(previous) = row.previous_pending_id.filter(|id| !self.known.contains_key(id)) {
            // An older row of this aggregate committed after the cursor passed its id: re-read
            // from it, so that this row does not overtake it.
            self.remove_if_idle(&key);
            self.cursor.rewind(previous - 1);
            return;
        }
        self.known.insert(row.id, partition);
        aggregate.queue.push_back(row);
        self.queued += 1;
        if !aggregate.busy && !aggregate.in_ready {
            aggregate.in_ready = true;
            self.ready.push_back(key);
        }
    }

    /// Remembers `row` as refused if its aggregate is parked, so that claims skip it while the
    /// park holds; says whether it was.
    fn refuse_if_parked(&mut self, row: &ClaimedRow) -> bool {
        let parked = self.aggregates.get(&row.aggregate_id).is_some_and(|a| a.park.is_some());
        if parked {
            self.refused.insert(&row.aggregate_id, row.id);
        }
        parked
    }

    /// Hands the head row of ready aggregates to the publishing task while the window has room
    /// and the publish fence allows: the verdict of an event handed over later might come after
    /// the lease can expire.
    fn dispatch(&mut self, now: Instant) {
        if self.stopping || !self.fence.allows(now) {
            return;
        }
        let Some(submit_by) = self.fence.submit_by() else { return };
        while self.in_flight.len() < self.config.max_in_flight {
            let Some(key) = self.ready.pop_front() else { return };
            let Some(aggregate) = self.aggregates.get_mut(&key) else { continue };
            aggregate.in_ready = false;
            if aggregate.busy || aggregate.park.is_some() || !self.partitions.is_active(aggregate.partition) {
                continue;
            }
            let Some(row) = aggregate.queue.pop_front() else {
                self.remove_if_idle(&key);
                continue;
            };
            self.queued -= 1;
            let flight = InFlight {
                row_id: row.id,
                aggregate: key,
                attempts: row.attempts,
                created_at_us: row.created_at_us,
            };
            let (topic, envelope) = match row.event {
                Ok(event) => event,
                // A corrupt row: refused before reaching the broker.
                Err(err) => {
                    self.fail(flight, &err);
                    continue;
                }
            };
            let event_id = envelope.event_id();
            if self.submissions.send(Submission { topic, envelope, submit_by }).is_err() {
                // The publishing task is gone; the relay stops on its end. The row stays pending.
                self.known.remove(&flight.row_id);
                self.remove_if_idle(&flight.aggregate);
                return;
            }
            if let Some(aggregate) = self.aggregates.get_mut(&flight.aggregate) {
                aggregate.busy = true;
            }
            self.in_flight.insert(event_id, flight);
            self.counters.in_flight.store(self.in_flight.len() as u64, Ordering::Relaxed);
        }
    }

    /// An event handed to the publishing task never reached the broker.
    fn on_unsubmitted(&mut self, event_id: EventId, why: Unsubmitted) {
        let Some(flight) = self.in_flight.remove(&event_id) else { return };
        self.counters.in_flight.store(self.in_flight.len() as u64, Ordering::Relaxed);
        match why {
            Unsubmitted::Refused(err) => self.fail(flight, &err),
            Unsubmitted::Fenced => {
                // Not an attempt: the row stays pending as it is. The aggregate waits and is
                // re-read from this row, by this relay once its lease is renewed, or by the next
                // owner.
                self.known.remove(&flight.row_id);
                self.park(&flight.aggregate, Park::retry(flight.row_id, Instant::now() + UNPARK_RECHECK));
            }
        }
    }

    /// Partitions with events on their way to the broker: their leases must not be released
    /// before those events have their verdict.
    fn partitions_in_flight(&self) -> Vec<i64> {
        let partitions: BTreeSet<i64> =
            self.in_flight.values().filter_map(|flight| self.known.get(&flight.row_id).copied()).collect();
        partitions.into_iter().collect()
    }

    fn on_result(&mut self, result: PublishResult) {
        let Some(flight) = self.in_flight.remove(&result.event_id) else {
            tracing::warn!(event_id = %result.event_id, "publish result for an event this relay does not track");
            return;
        };
        self.counters.in_flight.store(self.in_flight.len() as u64, Ordering::Relaxed);
        match &result.outcome {
            Ok(receipt) => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                if receipt.duplicate {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                let waited = u64::try_from(now_us() - flight.created_at_us).unwrap_or_default();
                self.observer.acked(&AckedEvent {
                    row_id: flight.row_id,
                    event_id: result.event_id,
                    topic: &result.topic,
                    aggregate_id: &flight.aggregate,
                    position: &receipt.position,
                    duplicate: receipt.duplicate,
                    enqueue_to_ack: Duration::from_micros(waited),
                });
                self.published.push(flight.row_id);
                self.resume(&flight.aggregate);
            }
            Err(err) => self.fail(flight, err),
        }
    }

    /// Counts a failed attempt: schedules a retry or marks the row dead, and parks the aggregate
    /// so none of its later events overtakes this one.
    fn fail(&mut self, flight: InFlight, err: &Error) {
        let attempts = flight.attempts + 1;
        let dead = !err.is_retryable() || attempts >= i64::from(self.config.max_attempts);
        let delay = self.config.backoff.delay(u32::try_from(attempts).unwrap_or(u32::MAX));
        let error: String = err.to_string().chars().take(MAX_ERROR_LEN).collect();
        self.failures.push(Failure {
            id: flight.row_id,
            attempts,
            dead,
            next_attempt_at_us: (!dead)
                .then(|| now_us() + i64::try_from(delay.as_micros()).unwrap_or(i64::MAX)),
            error,
        });
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        if dead {
            self.counters.dead.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(row_id = flight.row_id, aggregate_id = %flight.aggregate, error = %err, attempts, "outbox event is dead");
        } else {
            tracing::debug!(row_id = flight.row_id, aggregate_id = %flight.aggregate, error = %err, attempts, ?delay, "outbox publish failed; will retry");
        }
        self.observer.failed(&FailedEvent {
            row_id: flight.row_id,
            aggregate_id: &flight.aggregate,
            error: err,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            dead,
        });
        if dead && !self.config.park_on_dead {
            self.resume(&flight.aggregate);
        } else {
            let park = if dead {
                // Its death is recorded once the outcome write carrying it commits.
                Park::dead(flight.row_id, None)
            } else {
                Park::retry(flight.row_id, Instant::now() + delay)
            };
            self.park(&flight.aggregate, park);
        }
    }

    /// The aggregate's in-flight event is settled: publish its next row, or forget it.
    fn resume(&mut self, key: &Arc<str>) {
        let Some(aggregate) = self.aggregates.get_mut(key) else { return };
        aggregate.busy = false;
        if aggregate.park.is_none() && !aggregate.queue.is_empty() {
            if !aggregate.in_ready {
                aggregate.in_ready = true;
                self.ready.push_back(Arc::clone(key));
            }
        } else {
            self.remove_if_idle(key);
        }
    }

    fn park(&mut self, key: &Arc<str>, park: Park) {
        let partition = shard_of(key) % self.partition_count;
        let aggregate = self.aggregates.entry(Arc::clone(key)).or_insert_with(|| Aggregate::new(partition));
        aggregate.busy = false;
        self.queued -= aggregate.drop_queue(&mut self.known);
        let park = match aggregate.park {
            Some(old) => old.merge(park),
            None => park,
        };
        aggregate.park = Some(park);
        if let Some(until) = park.until {
            self.timers.push(Reverse((until, Arc::clone(key))));
        }
    }

    fn remove_if_idle(&mut self, key: &Arc<str>) {
        if self.aggregates.get(key).is_some_and(|a| !a.busy && a.park.is_none() && a.queue.is_empty()) {
            self.aggregates.remove(key);
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, key))) = self.timers.peek().cloned() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(aggregate) = self.aggregates.get_mut(&key) else { continue };
            let Some(park) = aggregate.park.filter(|p| p.until == Some(at)) else { continue };
            if self.known.contains_key(&park.row_id) {
                // Its failure is not recorded yet; a claim now would skip the failed row.
                let until = now + UNPARK_RECHECK;
                aggregate.park = Some(Park { until: Some(until), ..park });
                self.timers.push(Reverse((until, key)));
                continue;
            }
            aggregate.park = None;
            self.refused.forget(&key);
            self.remove_if_idle(&key);
            self.cursor.rewind(park.row_id - 1);
        }
        self.sweep.begin_if_due(now, self.cursor.seen());
    }

    fn next_timer(&self, now: Instant, stop_deadline: Option<Instant>) -> Instant {
        let mut next = self.sweep.next_at();
        if let Some(Reverse((at, _))) = self.timers.peek() {
            next = next.min(*at);
        }
        if self.cursor.caught_up && !self.stopping {
            next = next.min(self.cursor.next_poll(now));
            if !self.cursor.is_idle(now) {
                next = next.min(self.cursor.idle_since());
            }
        }
        if !self.writes_empty() {
            next = next.min(self.write_retry_at);
        }
        if self.partitions.scan_due() {
            next = next.min(self.scan_retry_at);
        }
        if let Some(deadline) = stop_deadline {
            next = next.min(deadline);
        }
        next.max(now)
    }

    fn start_write(&mut self) -> Option<BoxFuture<WriteDone>> {
        if self.writes_empty() {
            return None;
        }
        let published = std::mem::take(&mut self.published);
        let failures = std::mem::take(&mut self.failures);
        let (store, owner) = (self.store.clone(), self.owner_check());
        let delete_published = self.config.deletes_published();
        #[cfg(feature = "testing")]
        let gate = self.config.mark_gate.clone();
        Some(Box::pin(async move {
            #[cfg(feature = "testing")]
            if let Some(gate) = gate {
                gate.pass().await;
            }
            let outcome = store.write(&published, delete_published, &failures, &owner).await;
            (published, failures, outcome)
        }))
    }

    fn on_written(
        &mut self,
        published: Vec<i64>,
        failures: Vec<Failure>,
        outcome: Result<(), sqlx::Error>,
        claim_running: bool,
    ) {
        if let Err(err) = outcome {
            // The rows stay in memory (never re-claimed) until the write succeeds.
            tracing::warn!(error = %err, rows = published.len() + failures.len(), "recording publish outcomes failed; retrying");
            self.published.extend(published);
            self.failures.extend(failures);
            self.write_retry_at = Instant::now() + DB_RETRY;
            return;
        }
        self.writes_done += 1;
        for dead in failures.iter().filter(|f| f.dead) {
            let parked = self.aggregates.values_mut().filter_map(|a| a.park.as_mut());
            for park in parked.filter(|p| p.is_dead() && p.row_id == dead.id) {
                park.recorded = Some(self.writes_done);
            }
        }
        let written = published.into_iter().chain(failures.iter().map(|f| f.id));
        if claim_running {
            self.forget_later.extend(written);
        } else {
            for id in written {
                self.known.remove(&id);
            }
            self.check_drained();
        }
    }

    fn start_scan(&mut self) -> Option<BoxFuture<ScanDone>> {
        if !self.partitions.scan_due() {
            return None;
        }
        let partitions = self.partitions.take_to_scan();
        let (store, count, writes_done) = (self.store.clone(), self.partition_count, self.writes_done);
        Some(Box::pin(async move {
            let outcome = store.blocked(&partitions, count).await;
            (partitions, writes_done, outcome)
        }))
    }

    /// Parks the aggregates the database shows blocked in `partitions`, then works on them.
    /// `started_after` is how many outcome writes had committed when the scan started.
    fn on_scanned(
        &mut self,
        partitions: Vec<i64>,
        started_after: u64,
        outcome: Result<Vec<BlockedRow>, sqlx::Error>,
    ) {
        // Partitions lost while the scan ran are no longer this relay's to work on.
        let partitions = self.partitions.still_owned(partitions);
        let blocked = match outcome {
            Ok(blocked) => blocked,
            Err(err) => {
                tracing::warn!(error = %err, "reading blocked outbox aggregates failed; retrying");
                self.partitions.rescan(partitions);
                self.scan_retry_at = Instant::now() + DB_RETRY;
                return;
            }
        };
        let scanned: HashSet<i64> = partitions.iter().copied().collect();
        // A dead park whose row the scan no longer shows blocked was lifted by an operator
        // (requeued or discarded). Only a scan that started after the row's death was written
        // can tell: an earlier one may have read the row while it was still pending.
        let lifted: Vec<Arc<str>> = self
            .aggregates
            .iter()
            .filter(|(_, a)| {
                scanned.contains(&a.partition)
                    && a.park.is_some_and(|p| p.is_dead() && p.seen_by_scan_after(started_after))
            })
            .map(|(key, _)| Arc::clone(key))
            .collect();
        for key in lifted {
            if let Some(aggregate) = self.aggregates.get_mut(&key) {
                aggregate.park = None;
            }
            self.refused.forget(&key);
            self.remove_if_idle(&key);
        }
        let (now, now_micros) = (Instant::now(), now_us());
        let mut seen = HashSet::new();
        for row in blocked {
            if row.dead && !self.config.park_on_dead {
                continue;
            }
            // Only the earliest blocking row of an aggregate matters.
            if !seen.insert(row.aggregate_id.clone()) {
                continue;
            }
            let park = if row.dead {
                // Read from the database: recorded before any scan this relay starts from now.
                Park::dead(row.id, Some(0))
            } else {
                let wait_us = row.next_attempt_at_us.unwrap_or_default() - now_micros;
                if wait_us <= 0 {
                    continue;
                }
                Park::retry(row.id, now + Duration::from_micros(wait_us as u64))
            };
            let key: Arc<str> = row.aggregate_id.into();
            if self.aggregates.get(&key).is_some_and(|a| a.busy) {
                // Its in-flight event settles the aggregate's state in memory.
                continue;
            }
            self.park(&key, park);
        }
        self.partitions.activate(&partitions);
        self.counters.partitions.store(self.partitions.active_count() as u64, Ordering::Relaxed);
        self.cursor.rewind(0);
    }

    fn on_lease(&mut self, event: LeaseEvent) {
        match event {
            LeaseEvent::Renewed(started) => self.fence.renewed(started, self.config.lease_ttl),
            LeaseEvent::Acquired(partitions) => self.partitions.acquired(partitions),
            LeaseEvent::Changed(partitions) => self.partitions.changed(partitions),
            LeaseEvent::Lost(partitions) => {
                tracing::warn!(?partitions, "outbox partition leases lost; stopping work on them");
                self.partitions.lost(&partitions);
                self.drop_partitions(&partitions);
            }
            LeaseEvent::Release(partitions) => {
                self.partitions.release(&partitions);
                self.drop_partitions(&partitions);
                self.check_drained();
            }
        }
    }

    /// Forgets the rows of `partitions`, which are no longer active: queued rows and parks are
    /// dropped (they are still pending in the database for the next owner); in-flight events
    /// finish and are marked.
    fn drop_partitions(&mut self, partitions: &[i64]) {
        self.counters.partitions.store(self.partitions.active_count() as u64, Ordering::Relaxed);
        let gone: Vec<Arc<str>> = self
            .aggregates
            .iter()
            .filter(|(_, a)| partitions.contains(&a.partition))
            .map(|(key, _)| Arc::clone(key))
            .collect();
        for key in gone {
            let Some(aggregate) = self.aggregates.get_mut(&key) else { continue };
            self.queued -= aggregate.drop_queue(&mut self.known);
            aggregate.park = None;
            self.refused.forget(&key);
            self.remove_if_idle(&key);
        }
    }

    /// Tells the keeper which draining partitions have nothing left in memory.
    fn check_drained(&mut self) {
        if !self.partitions.any_draining() {
            return;
        }
        let busy: HashSet<i64> = self.known.values().copied().collect();
        let done = self.partitions.drained(&busy);
        if !done.is_empty() {
            let _ = self.keeper.send(KeeperCommand::Released(done));
        }
    }

    /// Graceful shutdown: nothing new is published; queued rows stay pending in the database.
    fn stop(&mut self) {
        self.stopping = true;
        let all = self.partitions.stop();
        self.drop_partitions(&all);
        self.ready.clear();
    }
}

/// The engine's decisions driven event by event, with no relay loop: the database is an
/// in-memory SQLite the engine never reaches in these paths, the bus the memory bus.
#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use courier_core::ErrorKind;

    use super::*;

    async fn engine() -> Engine {
        engine_submitting().await.0
    }

    /// An engine, and what it hands to the publishing task.
    async fn engine_submitting() -> (Engine, mpsc::UnboundedReceiver<Submission>) {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let (submissions, submitted) = mpsc::unbounded_channel();
        let (keeper, _) = mpsc::unbounded_channel();
        let (idle, _) = watch::channel(false);
        let config = RelayConfig::default().partitions(1);
        let fence = PublishFence::new(config.lease_ttl, Duration::from_secs(5));
        let engine =
            Engine::new(store, submissions, fence, config, Arc::new(()), Arc::default(), keeper, idle);
        (engine, submitted)
    }

    /// Nothing goes to the broker before a renewal told the engine how long its leases hold;
    /// then the submission carries the fence's deadline.
    #[tokio::test]
    async fn events_go_out_only_while_the_lease_outlasts_a_publish() {
        let (mut engine, mut submitted) = engine_submitting().await;
        own_partition_zero(&mut engine);
        engine.accept(row("order-1", 1));
        let now = Instant::now();
        engine.dispatch(now);
        assert!(submitted.try_recv().is_err(), "published before any renewal");

        // Renewed 6 s ago: a 10 s lease keeps 4 s, less than a 5 s publish and the margin.
        engine.on_lease(LeaseEvent::Renewed(now - Duration::from_secs(6)));
        engine.dispatch(now);
        assert!(submitted.try_recv().is_err(), "published with a lease about to expire");

        engine.on_lease(LeaseEvent::Renewed(now));
        engine.dispatch(now);
        let submission = submitted.try_recv().expect("published once renewed");
        assert_eq!(submission.submit_by, now + Duration::from_secs(4));
        assert_eq!(engine.in_flight.len(), 1);
    }

    /// An event that waited past its fence in the publishing task is no attempt: no failure
    /// is recorded, and the aggregate waits to be re-read from it.
    #[tokio::test]
    async fn an_event_fenced_out_is_not_counted_as_an_attempt() {
        let (mut engine, mut submitted) = engine_submitting().await;
        own_partition_zero(&mut engine);
        engine.on_lease(LeaseEvent::Renewed(Instant::now()));
        engine.accept(row("order-1", 1));
        engine.accept(row("order-1", 2));
        engine.dispatch(Instant::now());
        let event_id = submitted.try_recv().unwrap().envelope.event_id();
        engine.on_unsubmitted(event_id, Unsubmitted::Fenced);
        assert!(engine.failures.is_empty(), "a fenced event counted as a failed attempt");
        assert!(engine.in_flight.is_empty() && !engine.known.contains_key(&1));
        assert!(parked(&engine, "order-1").is_some_and(|p| p.row_id == 1 && !p.is_dead()));
        engine.dispatch(Instant::now());
        assert!(submitted.try_recv().is_err(), "the aggregate's next event overtook the fenced one");
    }

    /// At a shutdown that timed out, the partitions with events on their way keep their leases.
    #[tokio::test]
    async fn partitions_with_events_in_flight_are_not_released() {
        let (mut engine, _submitted) = engine_submitting().await;
        own_partition_zero(&mut engine);
        assert!(engine.partitions_in_flight().is_empty());
        engine.on_lease(LeaseEvent::Renewed(Instant::now()));
        engine.accept(row("order-1", 1));
        engine.dispatch(Instant::now());
        assert_eq!(engine.partitions_in_flight(), vec![0]);
    }

    /// Takes partition 0 with nothing blocked in it.
    fn own_partition_zero(engine: &mut Engine) {
        engine.on_lease(LeaseEvent::Acquired(vec![0]));
        let _scan = engine.start_scan().expect("a scan of the new partition");
        engine.on_scanned(vec![0], engine.writes_done, Ok(Vec::new()));
        assert!(engine.partitions.is_active(0));
    }

    /// The last attempt of `row_id` failed for good; returns the failure write it made.
    fn dies(engine: &mut Engine, aggregate: &str, row_id: i64) -> Vec<Failure> {
        let flight = InFlight { row_id, aggregate: aggregate.into(), attempts: 9, created_at_us: now_us() };
        engine.known.insert(row_id, 0);
        engine.fail(flight, &Error::new(ErrorKind::Rejected, "refused for good"));
        std::mem::take(&mut engine.failures)
    }

    fn parked(engine: &Engine, aggregate: &str) -> Option<Park> {
        engine.aggregates.get(aggregate).and_then(|a| a.park)
    }

    /// A pending row of `aggregate` as a claim fetches it.
    fn row(aggregate: &str, id: i64) -> ClaimedRow {
        let envelope = courier_core::Envelope::builder("order", aggregate, "OrderPlaced").build().unwrap();
        ClaimedRow {
            id,
            shard: shard_of(aggregate),
            aggregate_id: aggregate.into(),
            attempts: 0,
            created_at_us: now_us(),
            previous_pending_id: None,
            event: Ok((courier_core::Topic::new("orders").unwrap(), envelope)),
        }
    }

    /// A claim whose scan finds `rows` and whose fetch returns those it asked for, standing in
    /// for the database (the engine's futures are never polled); says whether it fetched any.
    fn claim(engine: &mut Engine, rows: &[ClaimedRow]) -> bool {
        let (epoch, from) = (engine.cursor.epoch, engine.cursor.after);
        let ids = rows.iter().map(|r| (r.id, r.shard)).collect();
        let scanned =
            ClaimStep::Scanned { reader: Reader::Cursor { epoch }, from, ids: Ok(ids), limit: 1000 };
        if engine.on_claim_step(scanned).is_none() {
            return false;
        }
        let fetched = rows.iter().map(|r| row(&r.aggregate_id, r.id)).collect();
        assert!(engine
            .on_claim_step(ClaimStep::Fetched { reader: Reader::Cursor { epoch }, from, rows: Ok(fetched) })
            .is_none());
        true
    }

    fn queued(engine: &Engine, aggregate: &str) -> usize {
        engine.aggregates.get(aggregate).map_or(0, |a| a.queue.len())
    }

    /// Aggregate `stuck` with its head, row 1, dead (written) and rows 2 and 3 behind it, which
    /// a claim fetched and refused.
    async fn parked_behind_a_dead_head() -> (Engine, Vec<ClaimedRow>) {
        let mut engine = engine().await;
        own_partition_zero(&mut engine);
        let failures = dies(&mut engine, "stuck", 1);
        engine.on_written(Vec::new(), failures, Ok(()), false);
        let behind = vec![row("stuck", 2), row("stuck", 3)];
        assert!(claim(&mut engine, &behind), "the first claim fetches the rows behind the park");
        assert_eq!(queued(&engine, "stuck"), 0, "a parked aggregate took rows");
        (engine, behind)
    }

    /// The rows waiting behind a park are fetched once, not again at every rewind or poll
    /// while the park holds (a backlog behind a dead event would be re-read for ever).
    #[tokio::test]
    async fn rows_refused_behind_a_park_are_not_fetched_again_while_it_holds() {
        let (mut engine, behind) = parked_behind_a_dead_head().await;
        engine.cursor.rewind(0);
        assert!(!claim(&mut engine, &behind), "the refused rows were fetched again");
        // Other aggregates' rows are still fetched.
        assert!(claim(&mut engine, &[row("stuck", 2), row("healthy", 4)]));
        assert_eq!(queued(&engine, "healthy"), 1);
    }

    /// A fetch is discarded when a rewind moved the cursor back while it ran; the rows of parked
    /// aggregates it read are refused all the same, or a fetch slower than the interval between
    /// rewinds would be discarded every time and the backlog fetched for ever.
    #[tokio::test]
    async fn rows_fetched_by_a_discarded_claim_are_refused_behind_a_park() {
        let (mut engine, _) = parked_behind_a_dead_head().await;
        let behind = [row("stuck", 4), row("stuck", 5)];
        let (epoch, from) = (engine.cursor.epoch, engine.cursor.after);
        let ids = behind.iter().map(|r| (r.id, r.shard)).collect();
        let scanned =
            ClaimStep::Scanned { reader: Reader::Cursor { epoch }, from, ids: Ok(ids), limit: 1000 };
        assert!(engine.on_claim_step(scanned).is_some());
        engine.cursor.rewind(0);
        let fetched = behind.iter().map(|r| row(&r.aggregate_id, r.id)).collect();
        assert!(engine
            .on_claim_step(ClaimStep::Fetched { reader: Reader::Cursor { epoch }, from, rows: Ok(fetched) })
            .is_none());
        assert!(!claim(&mut engine, &behind), "the rows read by the discarded claim were fetched again");
    }

    /// An operator requeued the dead head: the rows behind it are read again.
    #[tokio::test]
    async fn refused_rows_are_read_again_once_an_operator_lifts_the_park() {
        let (mut engine, behind) = parked_behind_a_dead_head().await;
        engine.on_lease(LeaseEvent::Changed(vec![0]));
        let _scan = engine.start_scan().expect("a scan");
        engine.on_scanned(vec![0], engine.writes_done, Ok(Vec::new()));
        assert!(parked(&engine, "stuck").is_none());
        assert!(claim(&mut engine, &behind), "the rows behind the lifted park were not read again");
        assert_eq!(queued(&engine, "stuck"), 2);
    }

    /// The retry of a failed head is due: the rows behind it are read again.
    #[tokio::test]
    async fn refused_rows_are_read_again_once_a_retry_is_due() {
        let mut engine = engine().await;
        own_partition_zero(&mut engine);
        tokio::time::pause();
        let flight = InFlight { row_id: 1, aggregate: "stuck".into(), attempts: 0, created_at_us: now_us() };
        engine.known.insert(1, 0);
        engine.fail(flight, &Error::new(ErrorKind::Timeout, "try again"));
        let failures = std::mem::take(&mut engine.failures);
        engine.on_written(Vec::new(), failures, Ok(()), false);
        let behind = [row("stuck", 2), row("stuck", 3)];
        assert!(claim(&mut engine, &behind));
        engine.cursor.rewind(0);
        assert!(!claim(&mut engine, &behind), "the refused rows were fetched again");
        tokio::time::advance(Duration::from_secs(3600)).await;
        engine.on_timer();
        assert!(parked(&engine, "stuck").is_none());
        assert!(claim(&mut engine, &behind), "the rows behind the retried head were not read again");
        assert_eq!(queued(&engine, "stuck"), 2);
    }

    /// A lease lost and taken again: the park is read from the database anew, and the rows
    /// behind it are fetched again (the park may have been lifted meanwhile).
    #[tokio::test]
    async fn refused_rows_are_forgotten_with_a_lost_lease() {
        let (mut engine, behind) = parked_behind_a_dead_head().await;
        engine.on_lease(LeaseEvent::Lost(vec![0]));
        own_partition_zero(&mut engine);
        assert!(claim(&mut engine, &behind), "rows refused under the lost lease were skipped");
    }

    /// Once caught up, a claim re-reads only the rows allocated since a horizon ago (where a
    /// commit-order gap can be), not every pending row from the oldest one on.
    #[tokio::test]
    async fn a_caught_up_claim_reads_from_the_low_water_mark() {
        let mut engine = engine().await;
        own_partition_zero(&mut engine);
        let (t0, horizon) = (Instant::now(), engine.config.sweep_interval);
        assert!(claim(&mut engine, &[row("a", 1), row("b", 2), row("c", 3)]));
        assert!(engine.cursor.caught_up);
        assert_eq!(engine.cursor.start(t0), 3, "the first pass is read again");
        assert!(claim(&mut engine, &[row("d", 4)]));
        assert_eq!(engine.cursor.start(t0 + horizon), 3, "row 4 was read less than a horizon ago");
        assert_eq!(engine.cursor.start(t0 + horizon * 2), 4, "a caught-up claim re-reads old rows");
        // A rewind still reads from the oldest row.
        engine.cursor.rewind(0);
        assert_eq!(engine.cursor.start(t0 + horizon * 2), 0);
    }

    /// A sweep walks the pending rows beside the main cursor: it neither moves the cursor back
    /// nor discards the claim in progress, or at every sweep new rows would wait for a walk
    /// across the whole parked backlog.
    #[tokio::test]
    async fn a_sweep_leaves_the_cursor_and_the_claim_in_progress() {
        let mut engine = engine().await;
        own_partition_zero(&mut engine);
        tokio::time::pause();
        assert!(claim(&mut engine, &[row("a", 1), row("b", 3)]));
        let (epoch, after) = (engine.cursor.epoch, engine.cursor.after);
        tokio::time::advance(engine.config.sweep_interval).await;
        engine.on_timer();
        assert_eq!(
            (engine.cursor.epoch, engine.cursor.after),
            (epoch, after),
            "the sweep rewound the cursor"
        );
        // The walk reads from the oldest row; the next one finds row 2, which committed late.
        assert_eq!(engine.sweep.take_turn(false), Some(0));
        let scanned =
            ClaimStep::Scanned { reader: Reader::Sweep, from: 0, ids: Ok(vec![(1, 0), (3, 0)]), limit: 1000 };
        assert!(engine.on_claim_step(scanned).is_none(), "rows in memory were fetched again");
        assert!(!engine.sweep.walking(), "the walk went on past the last pending row");
        tokio::time::advance(engine.config.sweep_interval).await;
        engine.on_timer();
        let ids = Ok(vec![(1, 0), (2, 0), (3, 0)]);
        let scanned = ClaimStep::Scanned { reader: Reader::Sweep, from: 0, ids, limit: 1000 };
        assert!(engine.on_claim_step(scanned).is_some(), "the late row was not fetched");
        assert_eq!((engine.cursor.epoch, engine.cursor.after), (epoch, after));
    }

    /// A claim whose fetch failed after its scan moved the cursor on: its rows are read again
    /// at the next poll, also where they are below the low-water mark.
    #[tokio::test]
    async fn a_failed_fetch_is_read_again_at_the_next_poll() {
        let mut engine = engine().await;
        own_partition_zero(&mut engine);
        let (t0, horizon) = (Instant::now(), engine.config.sweep_interval);
        assert!(claim(&mut engine, &[row("a", 100)]));
        engine.cursor.start(t0 + horizon);
        assert_eq!(engine.cursor.start(t0 + horizon * 2), 100);
        // A rewind finds rows 10 and 20 (committed late); their fetch fails.
        engine.cursor.rewind(0);
        let (epoch, from) = (engine.cursor.epoch, engine.cursor.start(t0 + horizon * 2));
        let scanned = ClaimStep::Scanned {
            reader: Reader::Cursor { epoch },
            from,
            ids: Ok(vec![(10, 0), (20, 0)]),
            limit: 1000,
        };
        assert!(engine.on_claim_step(scanned).is_some());
        let failed = ClaimStep::Fetched {
            reader: Reader::Cursor { epoch },
            from,
            rows: Err(sqlx::Error::PoolTimedOut),
        };
        assert!(engine.on_claim_step(failed).is_none());
        assert!(engine.cursor.caught_up);
        assert_eq!(engine.cursor.start(t0 + horizon * 2), 0, "the failed claim's rows are skipped");
    }

    /// A scan that read the row while it was still pending must not lift its dead park, or the
    /// aggregate's next event would overtake the dead one.
    #[tokio::test]
    async fn a_scan_older_than_a_death_does_not_lift_its_park() {
        let mut engine = engine().await;
        own_partition_zero(&mut engine);
        engine.on_lease(LeaseEvent::Changed(vec![0]));
        let started_after = engine.writes_done;
        let _stale = engine.start_scan().expect("a scan");
        let failures = dies(&mut engine, "order-1", 7);
        engine.on_written(Vec::new(), failures, Ok(()), false);
        // The stale scan saw row 7 pending, so it reports nothing blocked.
        engine.on_scanned(vec![0], started_after, Ok(Vec::new()));
        assert!(parked(&engine, "order-1").is_some_and(|p| p.is_dead() && p.row_id == 7));
    }

    /// Once the death is written, a scan that no longer finds the row blocked means an
    /// operator requeued or discarded it: the park is lifted.
    #[tokio::test]
    async fn a_scan_after_the_death_was_written_lifts_a_requeued_park() {
        let mut engine = engine().await;
        own_partition_zero(&mut engine);
        let failures = dies(&mut engine, "order-1", 7);
        engine.on_written(Vec::new(), failures, Ok(()), false);
        engine.on_lease(LeaseEvent::Changed(vec![0]));
        let _scan = engine.start_scan().expect("a scan");
        engine.on_scanned(vec![0], engine.writes_done, Ok(Vec::new()));
        assert!(parked(&engine, "order-1").is_none());
    }

    /// A death not yet written is not lifted by any scan.
    #[tokio::test]
    async fn an_unwritten_death_is_never_lifted() {
        let mut engine = engine().await;
        own_partition_zero(&mut engine);
        let _unwritten = dies(&mut engine, "order-1", 7);
        engine.on_lease(LeaseEvent::Changed(vec![0]));
        let _scan = engine.start_scan().expect("a scan");
        engine.on_scanned(vec![0], engine.writes_done, Ok(Vec::new()));
        assert!(parked(&engine, "order-1").is_some());
    }

    /// A scan that finishes after its partition's lease was lost must not make the partition
    /// active again (a zombie partition the new owner also works on).
    #[tokio::test]
    async fn a_scan_finishing_after_the_lease_was_lost_does_not_revive_the_partition() {
        let mut engine = engine().await;
        engine.on_lease(LeaseEvent::Acquired(vec![0]));
        let _scan = engine.start_scan().expect("a scan of the new partition");
        engine.on_lease(LeaseEvent::Lost(vec![0]));
        engine.on_scanned(vec![0], engine.writes_done, Ok(Vec::new()));
        assert!(!engine.partitions.is_active(0), "the lost partition is active again");
        // Nor is it queued to be scanned again after a failed scan.
        engine.on_scanned(vec![0], engine.writes_done, Err(sqlx::Error::PoolTimedOut));
        assert!(!engine.partitions.scan_due());
    }
}
