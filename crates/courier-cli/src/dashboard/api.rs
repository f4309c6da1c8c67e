//! The JSON API, `/api/v1/…`: what the pages show, for scripts and for the pages' actions.
//!
//! - `GET overview`: counts by status (published ones up to [`PUBLISHED_COUNT_CAP`]), the oldest
//!   pending event's age, the relay instances;
//! - `GET events?…`: a page of events, newest first (see [`query`](super::query) for the
//!   parameters), with `next_before` for the next page;
//! - `GET events/{id}`: every column of one event;
//! - `POST dead/requeue?…`, `POST dead/discard?…`: requeue or discard the dead events the
//!   parameters select (`all=true` for every one; `dry_run=true` only counts them);
//! - `GET parked`: aggregates parked behind a dead event, with that head event;
//! - `GET charts`: the relay's published/s and commit→ACK p50/p99 of the last minutes.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use courier_outbox::{EventDetail, EventStatus, EventSummary, RelayInstance};
use serde_json::{json, Value};

use super::query::{self, Selection};
use super::{auth, Dashboard, Failure};

type Params = Query<Vec<(String, String)>>;

pub fn routes() -> Router<Dashboard> {
    Router::new()
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/events", get(events))
        .route("/api/v1/events/{id}", get(event))
        .route("/api/v1/dead/{action}", post(dead_action))
        .route("/api/v1/parked", get(parked))
        .route("/api/v1/charts", get(charts))
}

pub fn summary_json(e: &EventSummary) -> Value {
    json!({
        "id": e.id,
        "event_id": e.event_id,
        "status": e.status.as_str(),
        "topic": e.topic,
        "aggregate_type": e.aggregate_type,
        "aggregate_id": e.aggregate_id,
        "event_type": e.event_type,
        "attempts": e.attempts,
        "last_error": e.last_error,
        "created_at": e.created_at.to_rfc3339(),
        "last_attempt_at": e.last_attempt_at.map(|t| t.to_rfc3339()),
    })
}

fn relay_json(r: &RelayInstance) -> Value {
    let partitions: Vec<Value> =
        r.partitions.iter().map(|(p, left)| json!({ "partition": p, "lease_expires_in_ms": left })).collect();
    json!({ "instance_id": r.instance_id, "heartbeat_expires_in_ms": r.heartbeat_left_ms, "partitions": partitions })
}

fn detail_json(d: &EventDetail) -> Value {
    let (encoding, text) = super::html::payload_text(&d.payload);
    let mut value = summary_json(&d.summary);
    let extra = json!({
        "shard": d.shard,
        "event_version": d.event_version,
        "headers": d.headers,
        "headers_text": d.headers_text,
        "payload": { "encoding": encoding, "text": text },
        "traceparent": d.traceparent,
        "trace_id": d.trace_id(),
        "tracestate": d.tracestate,
        "correlation_id": d.correlation_id,
        "tenant": d.tenant,
        "idempotency_key": d.idempotency_key,
        "occurred_at": d.occurred_at.to_rfc3339(),
        "next_attempt_at": d.next_attempt_at.map(|t| t.to_rfc3339()),
        "published_at": d.published_at.map(|t| t.to_rfc3339()),
    });
    value.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
    value
}

/// Published rows are counted up to this many on the overview, so that its cost stays bounded
/// however many rows the retention period keeps.
pub const PUBLISHED_COUNT_CAP: u64 = 100_000;

/// What the overview shows: counts by status, each read through an index or bounded.
pub struct Counts {
    pub pending: u64,
    pub dead: u64,
    /// At most [`PUBLISHED_COUNT_CAP`].
    pub published: u64,
    pub oldest_pending_age: Option<std::time::Duration>,
}

impl Counts {
    pub async fn read(store: &courier_outbox::Store) -> Result<Self, Failure> {
        let backlog = store.backlog().await?;
        let all = courier_outbox::EventFilter::default();
        Ok(Self {
            pending: backlog.pending,
            dead: store.count_events(Some(EventStatus::Dead), &all).await?,
            published: store
                .count_events_up_to(Some(EventStatus::Published), &all, PUBLISHED_COUNT_CAP)
                .await?,
            oldest_pending_age: backlog.oldest_pending_age,
        })
    }

    /// The published count as shown: `100000+` when capped.
    pub fn published_text(&self) -> String {
        if self.published >= PUBLISHED_COUNT_CAP {
            format!("{PUBLISHED_COUNT_CAP}+")
        } else {
            self.published.to_string()
        }
    }
}

async fn overview(State(dashboard): State<Dashboard>) -> Result<Json<Value>, Failure> {
    let store = dashboard.store()?;
    let counts = Counts::read(store).await?;
    let relays = store.relay_instances().await?;
    Ok(Json(json!({
        "counts": { "pending": counts.pending, "published": counts.published, "dead": counts.dead },
        "published_capped": counts.published >= PUBLISHED_COUNT_CAP,
        "oldest_pending_age_s": counts.oldest_pending_age.map(|age| age.as_secs_f64()),
        "relays": relays.iter().map(relay_json).collect::<Vec<_>>(),
        "charts": dashboard.inner.recent.is_some(),
    })))
}

/// Parses the query string, refusing bad input with 400.
pub fn selection(params: &[(String, String)]) -> Result<Selection, Failure> {
    query::parse(params).map_err(Failure::bad_request)
}

async fn events(State(dashboard): State<Dashboard>, Query(params): Params) -> Result<Json<Value>, Failure> {
    let s = selection(&params)?;
    let events = dashboard.store()?.list_events(s.status, &s.filter, s.before, s.limit).await?;
    let next = (events.len() == s.limit as usize).then(|| events.last().map(|e| e.id)).flatten();
    Ok(Json(json!({ "events": events.iter().map(summary_json).collect::<Vec<_>>(), "next_before": next })))
}

async fn event(State(dashboard): State<Dashboard>, Path(id): Path<String>) -> Result<Json<Value>, Failure> {
    let id: i64 =
        id.parse().map_err(|_| Failure::bad_request(format!("event id must be an integer, got {id:?}")))?;
    match dashboard.store()?.event(id).await? {
        Some(detail) => Ok(Json(detail_json(&detail))),
        None => Err(Failure(axum::http::StatusCode::NOT_FOUND, format!("no event with id {id}"))),
    }
}

/// The two changes an operator makes to dead events.
#[derive(Debug, Clone, Copy)]
pub enum DeadAction {
    /// Pending again with a fresh attempt budget, published in order.
    Requeue,
    /// Deleted, never published; the aggregate resumes with its next event.
    Discard,
}

impl DeadAction {
    fn parse(text: &str) -> Result<Self, Failure> {
        match text {
            "requeue" => Ok(Self::Requeue),
            "discard" => Ok(Self::Discard),
            other => Err(Failure(
                axum::http::StatusCode::NOT_FOUND,
                format!("no action {other:?} on dead events: requeue or discard"),
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Requeue => "requeue",
            Self::Discard => "discard",
        }
    }
}

async fn dead_action(
    State(dashboard): State<Dashboard>,
    Path(action): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Json<Value>, Failure> {
    let action = DeadAction::parse(&action)?;
    let authorization = headers.get("authorization").and_then(|h| h.to_str().ok());
    let who = auth::authorize(dashboard.inner.token.as_ref(), authorization)
        .map_err(|refusal| Failure(refusal.status, refusal.message.into()))?;
    let s = selection(&params)?;
    if s.status.is_some() || s.before.is_some() {
        return Err(Failure::bad_request("dead-event actions take a filter, not status or before"));
    }
    if s.filter.is_empty() && !s.all {
        return Err(Failure::bad_request(format!(
            "{} needs a filter (id, topic, …) or all=true for every dead event",
            action.name()
        )));
    }
    let store = dashboard.store()?;
    if s.dry_run {
        let matched = store.count_events(Some(EventStatus::Dead), &s.filter).await?;
        return Ok(Json(json!({ "action": action.name(), "dry_run": true, "matched": matched })));
    }
    let changed = match action {
        DeadAction::Requeue => store.requeue(&s.filter).await?,
        DeadAction::Discard => store.discard_dead(&s.filter).await?,
    };
    tracing::info!(token = who, action = action.name(), filter = ?s.filter, changed, "dashboard: dead events changed");
    Ok(Json(json!({ "action": action.name(), "changed": changed })))
}

async fn parked(State(dashboard): State<Dashboard>, Query(params): Params) -> Result<Json<Value>, Failure> {
    let s = selection(&params)?;
    let parked = dashboard.store()?.parked(s.limit).await?;
    let parked: Vec<Value> = parked
        .iter()
        .map(|p| json!({ "aggregate_id": p.head.aggregate_id, "head": summary_json(&p.head), "waiting": p.waiting }))
        .collect();
    Ok(Json(json!({ "parked": parked })))
}

async fn charts(State(dashboard): State<Dashboard>) -> Json<Value> {
    Json(match &dashboard.inner.recent {
        Some(recent) => json!({ "available": true, "points": recent.points() }),
        None => json!({ "available": false, "points": [] }),
    })
}
