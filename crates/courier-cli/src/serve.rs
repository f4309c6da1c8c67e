//! `courier relay`: the outbox relay as a service, with Prometheus metrics, health and
//! readiness endpoints, and a graceful drain on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{Bus, TopicConfig};
use courier_outbox::{AckedEvent, FailedEvent, Relay, RelayHandle, RelayObserver, Store};
use tokio::sync::watch;

use crate::args::RelayArgs;
use crate::bus_url::{with_bus, BusUrl};
use crate::config::Config;
use crate::exit::usage;
use crate::http::{Metrics, OutcomeLabels, Readiness};

/// How often the outbox gauges (pending count, oldest age) are refreshed from the database.
const STATS_INTERVAL: Duration = Duration::from_secs(2);

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

/// Ready when the database answers, the broker is reachable and the relay task runs.
struct RelayReadiness<B> {
    store: Store,
    bus: B,
    running: watch::Receiver<bool>,
}

impl<B: Bus> Readiness for RelayReadiness<B> {
    async fn check(&self) -> Result<(), String> {
        if !*self.running.borrow() {
            return Err("the relay is not running".into());
        }
        let db = tokio::time::timeout(Duration::from_secs(2), self.store.stats()).await;
        match db {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("database: {e}")),
            Err(_) => return Err("database: no answer within 2s".into()),
        }
        match tokio::time::timeout(Duration::from_secs(2), self.bus.health()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{} broker: {e}", self.bus.name())),
            Err(_) => Err(format!("{} broker: no answer within 2s", self.bus.name())),
        }
    }
}

impl RelayArgs {
    /// Runs the relay of `config`, with this command line's overrides, until SIGTERM or SIGINT.
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
                 (COURIER_BUS_URL); `memory` only when named",
            ));
        };
        if url == BusUrl::Memory {
            tracing::warn!(
                "relaying to the in-process memory bus: rows are marked published, and their events \
                 vanish when this process exits"
            );
        }
        let store = config.connect_store().await?;
        let wire = config.bus.wire;
        with_bus!(url, wire, |bus| run(config, store, bus).await)
    }
}

/// Runs the relay until SIGTERM or SIGINT, then drains within the configured timeout.
async fn run<B: Bus>(config: Config, store: Store, bus: B) -> anyhow::Result<bool> {
    for topic in config.provisioned_topics()? {
        bus.provision(&TopicConfig::new(topic.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("provisioning topic {topic}: {e}"))?;
    }
    let metrics = Arc::new(Metrics::default());
    let observer = MetricsObserver { metrics: Arc::clone(&metrics), backend: bus.name() };
    let relay = Relay::new(store.clone(), bus.clone(), config.relay_config()).observer(observer).start();
    tracing::info!(
        instance = relay.instance_id(),
        database = store.backend(),
        bus = bus.name(),
        "relay started"
    );

    let (running_tx, running) = watch::channel(true);
    let (stop_http, mut http_stop) = watch::channel(false);
    let readiness = RelayReadiness { store: store.clone(), bus, running };
    let mut server =
        tokio::spawn(crate::http::serve(config.http.listen, Arc::clone(&metrics), readiness, async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        }));

    let supervised = supervise(&relay, &store, &metrics, &mut server).await;
    let _ = running_tx.send(false);
    tracing::info!(timeout = ?config.relay.drain_timeout, "draining in-flight ACKs");
    let drained = relay.shutdown().await;
    let _ = stop_http.send(true);
    if !server.is_finished() {
        let _ = server.await;
    }
    supervised?;
    drained.map_err(|e| anyhow::anyhow!("relay shutdown: {e}"))?;
    tracing::info!("relay drained and stopped");
    Ok(true)
}

/// Refreshes the gauges until SIGTERM/SIGINT (`Ok`), or until the relay or the HTTP listener
/// stops on its own (`Err`).
async fn supervise(
    relay: &RelayHandle,
    store: &Store,
    metrics: &Metrics,
    server: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(STATS_INTERVAL);
    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM received");
                return Ok(());
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT received");
                return Ok(());
            }
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
                match store.stats().await {
                    Ok(stats) => {
                        metrics.pending.set(stats.pending as i64);
                        metrics.oldest_pending_age.set(stats.oldest_pending_age.unwrap_or_default().as_secs_f64());
                    }
                    Err(e) => tracing::warn!(error = %e, "reading outbox stats failed"),
                }
            }
        }
    }
}
