//! The relay's HTTP listener: `/metrics` (Prometheus text format), `/healthz` (the process is
//! alive), `/readyz` (database and broker reachable, relay running), and the operator dashboard
//! (`/ui`, `/api/v1`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::dashboard::charts::{latency_bounds, Recent};
use crate::dashboard::Dashboard;

/// Labels of `courier_publish_outcomes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub backend: String,
    /// `ok`, `duplicate`, or the error kind (`timeout`, `connection`, …).
    pub outcome: String,
}

/// Every metric the relay exports, in base units, prefixed `courier_`.
pub struct Metrics {
    registry: Registry,
    pub pending: Gauge,
    pub oldest_pending_age: Gauge<f64, AtomicU64>,
    pub published: Counter,
    pub failed: Counter,
    pub dead: Counter,
    pub in_flight: Gauge,
    pub commit_to_ack: Histogram,
    pub publish_outcomes: Family<OutcomeLabels, Counter>,
    /// The last minutes of published/s and commit→ACK latency, for the dashboard's charts.
    pub recent: Arc<Recent>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("courier");
        let metrics = Self {
            pending: Gauge::default(),
            oldest_pending_age: Gauge::default(),
            published: Counter::default(),
            failed: Counter::default(),
            dead: Counter::default(),
            in_flight: Gauge::default(),
            // 0.5 ms .. ~65 s
            commit_to_ack: Histogram::new(latency_bounds()),
            publish_outcomes: Family::default(),
            recent: Arc::default(),
            registry: Registry::default(),
        };
        registry.register("outbox_pending", "Outbox rows waiting to be published", metrics.pending.clone());
        registry.register_with_unit(
            "outbox_oldest_pending_age",
            "Age of the oldest pending outbox row",
            Unit::Seconds,
            metrics.oldest_pending_age.clone(),
        );
        registry.register(
            "outbox_published",
            "Rows marked published after a broker ACK",
            metrics.published.clone(),
        );
        registry.register(
            "outbox_failed",
            "Publish attempts that failed and were scheduled for retry",
            metrics.failed.clone(),
        );
        registry.register("outbox_dead", "Rows that went dead", metrics.dead.clone());
        registry.register(
            "relay_in_flight",
            "Events published and awaiting a broker ACK",
            metrics.in_flight.clone(),
        );
        registry.register_with_unit(
            "commit_to_ack",
            "Time from the outbox commit to the broker ACK",
            Unit::Seconds,
            metrics.commit_to_ack.clone(),
        );
        registry.register(
            "publish_outcomes",
            "Broker verdicts by backend and outcome",
            metrics.publish_outcomes.clone(),
        );
        Self { registry, ..metrics }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

/// Decides `/readyz`: `Err` carries the reason shown to the prober.
pub trait Readiness: Send + Sync + 'static {
    fn check(&self) -> impl Future<Output = Result<(), String>> + Send;
}

struct AppState<R> {
    metrics: Arc<Metrics>,
    readiness: R,
}

/// Binds the listener, so that an address in use fails the command at once.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    tracing::info!(%listen, "serving /metrics, /healthz, /readyz, /ui, /api/v1");
    Ok(listener)
}

/// Serves until `shutdown` resolves.
pub async fn serve<R: Readiness>(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: R,
    dashboard: Dashboard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = Arc::new(AppState { metrics, readiness });
    let app = Router::new()
        .route("/metrics", get(metrics_handler::<R>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler::<R>))
        .with_state(state)
        .merge(dashboard.router());
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

async fn metrics_handler<R: Readiness>(
    State(state): State<Arc<AppState<R>>>,
) -> impl axum::response::IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
}

async fn ready_handler<R: Readiness>(State(state): State<Arc<AppState<R>>>) -> (StatusCode, String) {
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}
