//! The HTML pages under `/ui`, rendered on the server from the same [`Store`] calls as the API.
//! Every value from an event goes through [`escape`]. The pages' one script (`/ui/dashboard.js`)
//! sends the actions to the API with the admin token and refreshes the charts; a
//! Content-Security-Policy allows no other script, so markup that slipped into a page could
//! not run either.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use courier_outbox::{EventStatus, EventSummary};

use super::api::{selection, Counts};
use super::charts::overview_charts;
use super::html::{escape, payload_text};
use super::query::with;
use super::{Dashboard, Failure};

type Params = Query<Vec<(String, String)>>;

const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<Dashboard> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(overview))
        .route("/ui/charts", get(charts))
        .route("/ui/events", get(events))
        .route("/ui/events/{id}", get(detail))
        .route("/ui/dead", get(dead))
        .route("/ui/parked", get(parked))
        .route(
            "/ui/dashboard.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }),
        )
        .route(
            "/ui/dashboard.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        )
}

/// A page, or the failure shown as a page.
struct Page(Result<String, Failure>);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let (status, body) = match self.0 {
            Ok(body) => (axum::http::StatusCode::OK, body),
            Err(Failure(status, message)) => {
                (status, layout("Error", "", &format!(r#"<p class="error">{}</p>"#, escape(&message))))
            }
        };
        let headers = [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ];
        (status, headers, body).into_response()
    }
}

/// The frame of every page: navigation, the admin token field, the place for action results.
fn layout(title: &str, active: &str, body: &str) -> String {
    let mut nav = String::new();
    for (href, name) in
        [("/ui", "Overview"), ("/ui/events", "Events"), ("/ui/dead", "Dead"), ("/ui/parked", "Parked")]
    {
        let class = if name == active { r#" class="active""# } else { "" };
        let _ = write!(nav, r#"<a href="{href}"{class}>{name}</a>"#);
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · Courier</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/ui/dashboard.css"><script src="/ui/dashboard.js" defer></script></head>
<body><header><strong>Courier</strong><nav>{nav}</nav>
<label class="token">Admin token <input id="token" type="password" autocomplete="off" placeholder="needed for changes"></label></header>
<main><h1>{title}</h1><div id="status" role="alert"></div>
{body}</main></body></html>"#,
        title = escape(title),
    )
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

fn optional(value: Option<&str>) -> String {
    value.map_or_else(|| "–".to_owned(), escape)
}

async fn overview(State(dashboard): State<Dashboard>) -> Page {
    Page(overview_body(&dashboard).await)
}

async fn overview_body(dashboard: &Dashboard) -> Result<String, Failure> {
    let store = dashboard.store()?;
    let counts = Counts::read(store).await?;
    let relays = store.relay_instances().await?;
    let age =
        counts.oldest_pending_age.map_or_else(|| "–".to_owned(), |a| format!("{:.3} s", a.as_secs_f64()));
    let mut body = format!(
        r#"<section class="counts">
<a class="count" href="/ui/events?status=pending"><span>pending</span><b id="count-pending">{}</b></a>
<a class="count" href="/ui/events?status=published"><span>published</span><b id="count-published">{}</b></a>
<a class="count dead" href="/ui/dead"><span>dead</span><b id="count-dead">{}</b></a>
<div class="count"><span>oldest pending</span><b id="oldest-pending">{age}</b></div></section>"#,
        counts.pending,
        counts.published_text(),
        counts.dead
    );
    body.push_str(r#"<h2>Throughput and latency</h2>"#);
    match &dashboard.inner.recent {
        Some(recent) => {
            let _ = write!(
                body,
                r#"<div id="charts" data-refresh="/ui/charts">{}</div>"#,
                overview_charts(&recent.points(), chrono::Utc::now().timestamp())
            );
        }
        None => body.push_str(
            r#"<p class="note">The relay measures these: open the dashboard of a running <code>courier relay</code> (its <code>/ui</code>) to see them.</p>"#,
        ),
    }
    body.push_str(
        "<h2>Relay instances</h2><table id=\"relays\"><thead><tr><th>instance</th><th>heartbeat expires in</th>\
         <th>partitions</th><th>first lease expires in</th></tr></thead><tbody>",
    );
    if relays.is_empty() {
        body.push_str(r#"<tr><td colspan="4" class="note">No relay is running.</td></tr>"#);
    }
    for r in &relays {
        let partitions: Vec<String> = r.partitions.iter().map(|(p, _)| p.to_string()).collect();
        let lease = r.partitions.iter().map(|(_, left)| *left).min();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.instance_id),
            r.heartbeat_left_ms.map_or_else(|| "gone".to_owned(), millis),
            if partitions.is_empty() { "–".to_owned() } else { partitions.join(", ") },
            lease.map_or_else(|| "–".to_owned(), millis),
        );
    }
    body.push_str("</tbody></table>");
    Ok(layout("Overview", "Overview", &body))
}

/// Milliseconds as seconds, or "expired".
fn millis(ms: i64) -> String {
    if ms < 0 {
        format!("expired {:.1} s ago", -ms as f64 / 1000.0)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

async fn charts(State(dashboard): State<Dashboard>) -> Response {
    let svg = match &dashboard.inner.recent {
        Some(recent) => overview_charts(&recent.points(), chrono::Utc::now().timestamp()),
        None => String::new(),
    };
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], svg)
        .into_response()
}

/// The filter form; `with_status` adds the status choice (the dead page has none).
fn filter_form(action: &str, params: &[(String, String)], with_status: bool) -> String {
    let value = |name: &str| {
        escape(params.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).unwrap_or_default())
    };
    let mut form = format!(r#"<form class="filters" method="get" action="{action}">"#);
    if with_status {
        let current = value("status");
        form.push_str(r#"<label>status <select name="status"><option value="">any</option>"#);
        for status in ["pending", "published", "dead"] {
            let selected = if current == status { " selected" } else { "" };
            let _ = write!(form, r#"<option{selected}>{status}</option>"#);
        }
        form.push_str("</select></label>");
    }
    for (name, label, kind) in [
        ("topic", "topic", "text"),
        ("aggregate_type", "aggregate type", "text"),
        ("aggregate_id", "aggregate id", "text"),
        ("event_type", "event type", "text"),
        ("error", "error contains", "text"),
        ("from", "enqueued from (UTC)", "datetime-local"),
        ("to", "to (UTC)", "datetime-local"),
    ] {
        let _ = write!(
            form,
            r#"<label>{label} <input name="{name}" type="{kind}" value="{}"></label>"#,
            value(name)
        );
    }
    form.push_str(r#"<button type="submit">Filter</button></form>"#);
    form
}

/// The events table; `actions` adds requeue and discard buttons to each row.
fn events_table(events: &[EventSummary], actions: bool) -> String {
    let mut table = String::from(
        "<table class=\"events\"><thead><tr><th>id</th><th>status</th><th>topic</th><th>aggregate</th>\
         <th>event type</th><th>attempts</th><th>enqueued</th><th>last error</th>",
    );
    table.push_str(if actions { "<th></th></tr></thead><tbody>" } else { "</tr></thead><tbody>" });
    if events.is_empty() {
        table.push_str(r#"<tr><td colspan="9" class="note">No events match.</td></tr>"#);
    }
    for e in events {
        let _ = write!(
            table,
            r#"<tr data-id="{id}"><td><a href="/ui/events/{id}">{id}</a></td><td class="status {status}">{status}</td><td>{topic}</td><td>{atype}/{aid}</td><td>{etype}</td><td>{attempts}</td><td>{created}</td><td class="error-text">{error}</td>"#,
            id = e.id,
            status = e.status,
            topic = escape(&e.topic),
            atype = escape(&e.aggregate_type),
            aid = escape(&e.aggregate_id),
            etype = escape(&e.event_type),
            attempts = e.attempts,
            created = time(e.created_at),
            error = optional(e.last_error.as_deref()),
        );
        if actions {
            let _ = write!(table, "<td>{}</td>", dead_buttons(&format!("id={}", e.id)));
        }
        table.push_str("</tr>");
    }
    table.push_str("</tbody></table>");
    table
}

/// Requeue and discard buttons acting on the dead events `query` selects.
fn dead_buttons(query: &str) -> String {
    action_buttons(query, ("Requeue", "Discard"), None)
}

/// Requeue and discard buttons named `labels` acting on the dead events `query` selects; `warn`
/// is asked to be confirmed first.
fn action_buttons(query: &str, (requeue, discard): (&str, &str), warn: Option<&str>) -> String {
    let warn = warn.map(|w| format!(r#" data-warn="{}""#, escape(w))).unwrap_or_default();
    format!(
        r#"<button class="action" data-action="requeue" data-query="{q}"{warn}>{requeue}</button> <button class="action danger" data-action="discard" data-query="{q}"{warn}>{discard}</button>"#,
        q = escape(query)
    )
}

/// The link to the page after `events`, when it was full.
fn next_link(base: &str, params: &[(String, String)], events: &[EventSummary], limit: u32) -> String {
    match events.last() {
        Some(last) if events.len() == limit as usize => {
            format!(
                r#"<p><a id="next" href="{base}?{}">Older events →</a></p>"#,
                escape(&with(params, "before", &last.id.to_string()))
            )
        }
        _ => String::new(),
    }
}

async fn events(State(dashboard): State<Dashboard>, Query(params): Params) -> Page {
    Page(events_body(&dashboard, &params).await)
}

async fn events_body(dashboard: &Dashboard, params: &[(String, String)]) -> Result<String, Failure> {
    let s = selection(params)?;
    let events = dashboard.store()?.list_events(s.status, &s.filter, s.before, s.limit).await?;
    let body = filter_form("/ui/events", params, true)
        + &events_table(&events, false)
        + &next_link("/ui/events", params, &events, s.limit);
    Ok(layout("Events", "Events", &body))
}

async fn dead(State(dashboard): State<Dashboard>, Query(params): Params) -> Page {
    Page(dead_body(&dashboard, &params).await)
}

async fn dead_body(dashboard: &Dashboard, params: &[(String, String)]) -> Result<String, Failure> {
    let s = selection(params)?;
    if s.status.is_some() {
        return Err(Failure::bad_request("the dead page takes no status"));
    }
    let store = dashboard.store()?;
    let events = store.list_events(Some(EventStatus::Dead), &s.filter, s.before, s.limit).await?;
    let matching = with(params, "before", "");
    let bulk = if s.filter.is_empty() { with(params, "all", "true") } else { matching };
    let body = filter_form("/ui/dead", params, false)
        + &format!(
            r#"<p class="bulk">All dead events matching the filter: <button class="action" data-action="requeue" data-bulk="1" data-query="{q}">Requeue all…</button> <button class="action danger" data-action="discard" data-bulk="1" data-query="{q}">Discard all…</button></p>"#,
            q = escape(&bulk)
        )
        + &events_table(&events, true)
        + &next_link("/ui/dead", params, &events, s.limit);
    Ok(layout("Dead events", "Dead", &body))
}

async fn detail(State(dashboard): State<Dashboard>, Path(id): Path<String>) -> Page {
    Page(detail_body(&dashboard, &id).await)
}

async fn detail_body(dashboard: &Dashboard, id: &str) -> Result<String, Failure> {
    let id: i64 =
        id.parse().map_err(|_| Failure::bad_request(format!("event id must be an integer, got {id:?}")))?;
    let Some(d) = dashboard.store()?.event(id).await? else {
        return Err(Failure(axum::http::StatusCode::NOT_FOUND, format!("no event with id {id}")));
    };
    let e = &d.summary;
    let mut body = String::from(r#"<dl class="columns">"#);
    let rows: [(&str, String); 22] = [
        ("id", e.id.to_string()),
        ("event id", escape(&e.event_id)),
        ("status", e.status.to_string()),
        ("topic", escape(&e.topic)),
        ("aggregate type", escape(&e.aggregate_type)),
        ("aggregate id", escape(&e.aggregate_id)),
        ("event type", escape(&e.event_type)),
        ("event version", d.event_version.to_string()),
        ("shard", d.shard.to_string()),
        ("attempts", e.attempts.to_string()),
        ("last error", optional(e.last_error.as_deref())),
        ("last failed attempt at", e.last_attempt_at.map_or_else(|| "–".into(), time)),
        ("occurred at", time(d.occurred_at)),
        ("enqueued at", time(e.created_at)),
        ("next attempt at", d.next_attempt_at.map_or_else(|| "–".into(), time)),
        ("published at", d.published_at.map_or_else(|| "–".into(), time)),
        ("trace id", format!(r#"<code id="trace-id">{}</code>"#, optional(d.trace_id()))),
        ("traceparent", optional(d.traceparent.as_deref())),
        ("tracestate", optional(d.tracestate.as_deref())),
        ("correlation id", optional(d.correlation_id.as_deref())),
        ("tenant", optional(d.tenant.as_deref())),
        ("idempotency key", optional(d.idempotency_key.as_deref())),
    ];
    for (name, value) in rows {
        let _ = write!(body, "<dt>{name}</dt><dd>{value}</dd>");
    }
    body.push_str("</dl>");
    if e.status == EventStatus::Dead {
        let _ = write!(body, r#"<p>{}</p>"#, dead_buttons(&format!("id={}", e.id)));
    }
    body.push_str("<h2>Headers</h2>");
    if d.headers.is_empty() && d.headers_text.trim() != "{}" {
        let _ = write!(body, r#"<pre id="headers">{}</pre>"#, escape(&d.headers_text));
    } else {
        body.push_str(r#"<table id="headers"><tbody>"#);
        for (name, value) in &d.headers {
            let _ = write!(body, "<tr><th>{}</th><td>{}</td></tr>", escape(name), escape(value));
        }
        body.push_str("</tbody></table>");
    }
    let (encoding, text) = payload_text(&d.payload);
    let _ = write!(
        body,
        r#"<h2>Payload <small>({} bytes, {encoding})</small></h2><pre id="payload">{}</pre>"#,
        d.payload.len(),
        escape(&text)
    );
    Ok(layout(&format!("Event {id}"), "Events", &body))
}

async fn parked(State(dashboard): State<Dashboard>, Query(params): Params) -> Page {
    Page(parked_body(&dashboard, &params).await)
}

const ORDER_WARNING: &str = "The aggregate's waiting events are published after this. Requeueing \
    publishes the head first, in order; discarding skips it for good, so consumers see the next \
    event without it. Continue?";

async fn parked_body(dashboard: &Dashboard, params: &[(String, String)]) -> Result<String, Failure> {
    let s = selection(params)?;
    let parked = dashboard.store()?.parked(s.limit).await?;
    let mut body = String::from(
        "<p class=\"note\">Each aggregate waits behind its oldest dead event: the relay publishes none of its \
         later events until that head is requeued (published first, in order) or skipped (discarded).</p>\
         <table id=\"parked\"><thead><tr><th>aggregate</th><th>head event</th><th>event type</th><th>attempts</th>\
         <th>last error</th><th>dead since</th><th>head enqueued</th><th>waiting</th><th>release</th></tr></thead><tbody>",
    );
    if parked.is_empty() {
        body.push_str(r#"<tr><td colspan="9" class="note">No aggregate is parked.</td></tr>"#);
    }
    for p in &parked {
        let h = &p.head;
        let _ = write!(
            body,
            r#"<tr data-id="{id}"><td>{atype}/{aid}</td><td><a href="/ui/events/{id}">{id}</a></td><td>{etype}</td><td>{attempts}</td><td class="error-text">{error}</td><td>{dead_since}</td><td>{created}</td><td>{waiting}</td><td>{buttons}</td></tr>"#,
            id = h.id,
            atype = escape(&h.aggregate_type),
            aid = escape(&h.aggregate_id),
            etype = escape(&h.event_type),
            attempts = h.attempts,
            error = optional(h.last_error.as_deref()),
            // Unknown for a row that went dead before the outbox tables recorded it.
            dead_since = h.last_attempt_at.map_or_else(|| "unknown".to_owned(), time),
            created = time(h.created_at),
            waiting = p.waiting,
            buttons =
                action_buttons(&format!("id={}", h.id), ("Requeue head", "Skip head"), Some(ORDER_WARNING)),
        );
    }
    body.push_str("</tbody></table>");
    Ok(layout("Parked aggregates", "Parked", &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &str) -> EventSummary {
        EventSummary {
            id: 7,
            event_id: text.into(),
            topic: text.into(),
            aggregate_type: text.into(),
            aggregate_id: text.into(),
            event_type: text.into(),
            status: EventStatus::Dead,
            attempts: 3,
            last_error: Some(text.into()),
            created_at: chrono::DateTime::default(),
            last_attempt_at: None,
        }
    }

    /// Every field of a listed event is event content: none may reach the page as markup.
    #[test]
    fn listed_event_content_is_escaped() {
        let html = events_table(&[event("<script>alert(1)</script>")], true);
        assert!(!html.contains("<script>"), "{html}");
        assert_eq!(html.matches("&lt;script&gt;alert(1)&lt;/script&gt;").count(), 5, "{html}");
    }

    #[test]
    fn the_form_keeps_the_filter_escaped() {
        let params = vec![("topic".to_owned(), r#""><script>"#.to_owned())];
        let form = filter_form("/ui/events", &params, true);
        assert!(form.contains(r#"value="&quot;&gt;&lt;script&gt;""#), "{form}");
    }

    #[test]
    fn a_full_page_links_to_the_next_below_its_last_id() {
        let events = [event("a"), event("b")];
        let link = next_link("/ui/dead", &[("topic".into(), "t".into())], &events, 2);
        assert_eq!(link, r#"<p><a id="next" href="/ui/dead?topic=t&amp;before=7">Older events →</a></p>"#);
        assert_eq!(next_link("/ui/dead", &[], &events, 3), "");
    }
}
