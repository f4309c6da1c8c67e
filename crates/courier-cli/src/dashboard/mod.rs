//! The operator dashboard: a versioned JSON API under `/api/v1/` and server-rendered pages under
//! `/ui`, served next to `/metrics` by `courier relay` and on their own by `courier dashboard`.
//! Both call the [`Store`] operations the `courier outbox` commands call. Reading needs nothing;
//! changes need the admin token ([`auth`]).

use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use courier_outbox::Store;

mod api;
mod auth;
pub mod charts;
mod html;
mod pages;
mod query;

pub use auth::AdminToken;

use charts::Recent;

/// What the dashboard serves from: the store (once connected), the admin token, and the
/// relay's recent figures when a relay runs in this process.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    store: OnceLock<Store>,
    token: Option<AdminToken>,
    recent: Option<Arc<Recent>>,
}

impl Dashboard {
    /// A dashboard that answers 503 until [`connected`](Self::connected) gives it the store.
    pub fn new(token: Option<AdminToken>, recent: Option<Arc<Recent>>) -> Self {
        Self { inner: Arc::new(Inner { store: OnceLock::new(), token, recent }) }
    }

    /// Serves from `store` from now on.
    pub fn connected(&self, store: Store) {
        let _ = self.inner.store.set(store);
    }

    /// The routes of the API and the pages.
    pub fn router(&self) -> Router {
        api::routes().merge(pages::routes()).with_state(self.clone())
    }

    fn store(&self) -> Result<&Store, Failure> {
        self.inner.store.get().ok_or_else(|| {
            Failure(StatusCode::SERVICE_UNAVAILABLE, "waiting for the database (see /readyz)".into())
        })
    }
}

/// A request that failed: its status and a message for the operator.
#[derive(Debug)]
pub struct Failure(StatusCode, String);

impl Failure {
    fn bad_request(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
}

impl From<courier_outbox::OutboxError> for Failure {
    fn from(error: courier_outbox::OutboxError) -> Self {
        Self(StatusCode::INTERNAL_SERVER_ERROR, format!("database: {error}"))
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `courier dashboard`: serves the dashboard of the configured database until SIGTERM or SIGINT.
pub async fn run(args: crate::args::DashboardArgs, config: crate::config::Config) -> anyhow::Result<bool> {
    let token = config.http.admin_token().map_err(crate::exit::UsageError)?;
    let store = config.connect_store().await?;
    let dashboard = Dashboard::new(token, None);
    dashboard.connected(store);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(listen = %args.listen, read_only = dashboard.inner.token.is_none(), "serving the dashboard on /ui and /api/v1");
    let mut stop = crate::serve::stop_on_signal()?;
    axum::serve(listener, dashboard.router())
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await?;
    Ok(true)
}
