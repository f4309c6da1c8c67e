//! `courier relay`: the outbox relay as a service, with Prometheus metrics, health and
//! readiness endpoints, and a graceful drain on SIGTERM/SIGINT.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use courier_core::{Backoff, Bus, MemoryBus, TopicConfig};
use courier_kafka::KafkaBus;
use courier_nats::{NatsBus, NatsConfig};
use courier_outbox::{AckedEvent, FailedEvent, Relay, RelayHandle, RelayObserver, Store};
use tokio::sync::watch;

use crate::args::RelayArgs;
use crate::bus_url::BusUrl;
use crate::config::Config;
use crate::dashboard::Dashboard;
use crate::exit::{usage, UsageError};
use crate::http::{Metrics, OutcomeLabels, Readiness};
use courier_core::redact_url;

/// How often the outbox gauges (pending count, oldest age) are refreshed from the database.
const STATS_INTERVAL: Duration = Duration::from_secs(2);
/// How long a readiness probe waits for the database or the broker.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Feeds relay events into the metrics.
struct MetricsObserver {
    metrics: Arc<Metrics>,
    backend: &'static str,
}

impl MetricsObserver {
    fn outcome(&self, outcome: String) {
        self.metrics
            .publish_outcomes
            .get_or_create(&OutcomeLabels { backend: self.backend.into(), outcome })
            .inc();
    }
}

impl RelayObserver for MetricsObserver {
    fn acked(&self, event: &AckedEvent<'_>) {
        self.metrics.published.inc();
        self.metrics.commit_to_ack.observe(event.enqueue_to_ack.as_secs_f64());
        self.metrics.recent.observe(event.enqueue_to_ack);
        self.outcome(if event.duplicate { "duplicate" } else { "ok" }.into());
    }

    fn failed(&self, event: &FailedEvent<'_>) {
        if event.dead {
            self.metrics.dead.inc();
        } else {
            self.metrics.failed.inc();
        }
        self.outcome(event.error.kind().to_string().replace(' ', "_"));
    }
}

/// What `/readyz` answers: while the relay starts, what it still waits for; once it runs, live
/// checks of the database, the broker and the relay task.
#[derive(Clone)]
struct Ready(Arc<RwLock<Phase>>);

enum Phase {
    Starting(String),
    Running(Arc<dyn LiveCheck>),
}

impl Ready {
    fn starting(&self, waiting_for: String) {
        *self.0.write().expect("readiness lock") = Phase::Starting(waiting_for);
    }

    fn running(&self, check: impl LiveCheck) {
        *self.0.write().expect("readiness lock") = Phase::Running(Arc::new(check));
    }
}

impl Readiness for Ready {
    async fn check(&self) -> Result<(), String> {
        let phase = match &*self.0.read().expect("readiness lock") {
            Phase::Starting(waiting_for) => Err(waiting_for.clone()),
            Phase::Running(check) => Ok(Arc::clone(check)),
        };
        phase?.check().await
    }
}

/// The checks of a running relay; object-safe so that [`Ready`] need not know the bus type.
trait LiveCheck: Send + Sync + 'static {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// Ready when the database answers, the broker is reachable and the relay task runs.
struct RelayReadiness<B> {
    store: Store,
    bus: B,
    running: watch::Receiver<bool>,
}

impl<B: Bus> LiveCheck for RelayReadiness<B> {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            if !*self.running.borrow() {
                return Err("the relay is not running".into());
            }
            let db = tokio::time::timeout(CHECK_TIMEOUT, self.store.ping()).await;
            match db {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("database: {e}")),
                Err(_) => return Err("database: no answer within 2s".into()),
            }
            match tokio::time::timeout(CHECK_TIMEOUT, self.bus.health()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("{} broker: {e}", self.bus.name())),
                Err(_) => Err(format!("{} broker: no answer within 2s", self.bus.name())),
            }
        })
    }
}

impl RelayArgs {
    /// Runs the relay of `config`, with this command line's overrides, until SIGTERM or SIGINT.
    ///
    /// The HTTP listener comes up first. A database or broker that cannot be reached yet is
    /// retried with backoff while `/healthz` answers and `/readyz` names what is missing, as an
    /// orchestrator expects of a service whose dependencies start in any order.
    pub async fn run(self, mut config: Config) -> anyhow::Result<bool> {
        if let Some(bus) = self.bus {
            config.bus.url = Some(bus);
        }
        if let Some(listen) = self.listen {
            config.http.listen = listen;
        }
        let Some(url) = config.bus.url.clone() else {
            return Err(usage(
                "courier relay needs a bus: --bus nats://host:port, --bus kafka://host:port, or bus.url \
                 (COURIER_BUS__URL); `memory` only when named",
            ));
        };
        let topics = config.provisioned_topics().map_err(|e| anyhow::Error::from(UsageError(e)))?;
        let verdict_timeout = match &url {
            BusUrl::Memory => Duration::ZERO,
            BusUrl::Nats(nats) => NatsConfig::new(nats.as_str()).get_ack_timeout(),
            BusUrl::Kafka(servers) => config
                .bus
                .kafka
                .config(servers, config.bus.wire)
                .map_err(|e| anyhow::Error::from(UsageError(e)))?
                .get_verdict_timeout(),
        };
        config
            .relay_config()
            .validate_with(verdict_timeout)
            .map_err(|e| anyhow::Error::from(UsageError(e.into())))?;
        if url == BusUrl::Memory {
            tracing::warn!(
                "relaying to the in-process memory bus: rows are marked published, and their events \
                 vanish when this process exits"
            );
        }
        let token = config.http.admin_token().map_err(UsageError)?;
        let metrics = Arc::new(Metrics::default());
        let dashboard = Dashboard::new(token, Some(Arc::clone(&metrics.recent)));
        let ready = Ready(Arc::new(RwLock::new(Phase::Starting("starting".into()))));
        let (stop_http, mut http_stop) = watch::channel(false);
        let listener = crate::http::bind(config.http.listen).await?;
        let server = tokio::spawn(crate::http::serve(
            listener,
            Arc::clone(&metrics),
            ready.clone(),
            dashboard.clone(),
            async move {
                let _ = http_stop.wait_for(|stop| *stop).await;
            },
        ));
        let sampled = Arc::clone(&metrics);
        let sampler = tokio::spawn(async move { sampled.recent.sample(|| sampled.published.get()).await });
        let stop = stop_on_signal()?;
        let started = Started { config, metrics, ready, server, stop, dashboard };
        let outcome = started.connect_and_run(url, topics).await;
        sampler.abort();
        let _ = stop_http.send(true);
        outcome
    }
}

/// Whether `error` is a broker's configuration error, which no retry can fix.
fn is_configuration(error: &anyhow::Error) -> bool {
    error.downcast_ref::<courier_core::Error>().is_some_and(|e| e.kind() == courier_core::ErrorKind::Config)
}

/// The relay's process once its HTTP listener serves.
struct Started {
    config: Config,
    metrics: Arc<Metrics>,
    ready: Ready,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Turns true on SIGTERM or SIGINT.
    stop: watch::Receiver<bool>,
    dashboard: Dashboard,
}

impl Started {
    /// Connects to the database and the broker (retrying until both answer), provisions the
    /// configured topics, then relays until SIGTERM or SIGINT. A signal while it is still
    /// connecting ends it at once: nothing was claimed yet.
    async fn connect_and_run(self, url: BusUrl, topics: Vec<TopicConfig>) -> anyhow::Result<bool> {
        let database = redact_url(&self.config.database.url);
        let Some(store) = self.retry(&format!("database {database}"), || self.config.connect_store()).await?
        else {
            return Ok(true);
        };
        self.dashboard.connected(store.clone());
        let wire = self.config.bus.wire;
        match url {
            BusUrl::Memory => self.run(store, MemoryBus::default(), &topics).await,
            BusUrl::Nats(nats) => {
                let nats_config = self
                    .config
                    .bus
                    .nats
                    .config(&nats, wire)
                    .map_err(|e| anyhow::Error::from(UsageError(e)))?;
                let what = format!("NATS at {}", nats_config.shown_url());
                let bus = self.retry(&what, || async { Ok(NatsBus::connect(nats_config.clone()).await?) });
                let Some(bus) = bus.await? else { return Ok(true) };
                self.run(store, bus, &topics).await
            }
            BusUrl::Kafka(servers) => {
                let kafka_config = self.config.bus.kafka.config(&servers, wire)?;
                let what = format!("Kafka at {servers}");
                let bus = self.retry(&what, || async { Ok(KafkaBus::connect(kafka_config.clone())?) });
                let Some(bus) = bus.await? else { return Ok(true) };
                self.run(store, bus, &topics).await
            }
        }
    }

    /// Calls `connect` until it succeeds, with backoff; `/readyz` names `what` and the last
    /// error meanwhile. `None` when SIGTERM or SIGINT came first. A configuration error (a
    /// refused credential, an untrusted certificate) ends it at once: waiting cannot fix it.
    async fn retry<T, F: Future<Output = anyhow::Result<T>>>(
        &self,
        what: &str,
        connect: impl Fn() -> F,
    ) -> anyhow::Result<Option<T>> {
        let backoff = Backoff::default();
        let mut stop = self.stop.clone();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = tokio::select! {
                connected = connect() => match connected {
                    Ok(connected) => return Ok(Some(connected)),
                    Err(error) if is_configuration(&error) => return Err(error.context(format!("waiting for {what}"))),
                    Err(error) => crate::exit::render(&error),
                },
                _ = stop.wait_for(|stop| *stop) => return Ok(None),
            };
            let delay = backoff.delay(attempt);
            tracing::warn!(%error, ?delay, "waiting for {what}");
            self.ready.starting(format!("waiting for {what}: {error}"));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|stop| *stop) => return Ok(None),
            }
        }
    }

    /// Provisions `topics` (retrying while the broker refuses), then relays until SIGTERM or
    /// SIGINT and drains within the configured timeout.
    async fn run<B: Bus>(self, store: Store, bus: B, topics: &[TopicConfig]) -> anyhow::Result<bool> {
        for topic in topics {
            let what = format!("provisioning topic {} on the {} broker", topic.get_topic(), bus.name());
            let provisioned = self.retry(&what, || async { Ok(bus.provision(topic).await?) });
            if provisioned.await?.is_none() {
                return Ok(true);
            }
        }
        let Self { config, metrics, ready, mut server, mut stop, .. } = self;
        let observer = MetricsObserver { metrics: Arc::clone(&metrics), backend: bus.name() };
        let relay = Relay::new(store.clone(), bus.clone(), config.relay_config()).observer(observer).start();
        tracing::info!(
            instance = relay.instance_id(),
            database = store.backend(),
            bus = bus.name(),
            "relay started"
        );
        let (running_tx, running) = watch::channel(true);
        ready.running(RelayReadiness { store: store.clone(), bus, running });

        let supervised = supervise(&relay, &store, &metrics, &mut server, &mut stop).await;
        let _ = running_tx.send(false);
        tracing::info!(timeout = ?config.relay.drain_timeout, "draining in-flight ACKs");
        let drained = relay.shutdown().await;
        supervised?;
        drained.map_err(|e| anyhow::anyhow!("relay shutdown: {e}"))?;
        tracing::info!("relay drained and stopped");
        Ok(true)
    }
}

/// A flag that turns true on SIGTERM or SIGINT.
pub(crate) fn stop_on_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        let _ = stop_tx.send(true);
    });
    Ok(stop)
}

/// Refreshes the gauges until SIGTERM/SIGINT (`Ok`), or until the relay or the HTTP listener
/// stops on its own (`Err`).
async fn supervise(
    relay: &RelayHandle,
    store: &Store,
    metrics: &Metrics,
    server: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(STATS_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
            served = &mut *server => {
                return Err(match served {
                    Ok(Ok(())) => anyhow::anyhow!("the HTTP listener stopped"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::anyhow!("the HTTP listener failed: {e}"),
                });
            }
            _ = ticker.tick() => {
                anyhow::ensure!(!relay.is_finished(), "the relay stopped unexpectedly");
                metrics.in_flight.set(relay.stats().in_flight as i64);
                match store.backlog().await {
                    Ok(backlog) => {
                        metrics.pending.set(backlog.pending as i64);
                        metrics.oldest_pending_age.set(backlog.oldest_pending_age.unwrap_or_default().as_secs_f64());
                    }
                    Err(e) => tracing::warn!(error = %e, "reading outbox stats failed"),
                }
            }
        }
    }
}
