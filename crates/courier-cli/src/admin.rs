//! Outbox administration: `courier migrate` and `courier outbox stats|dead|requeue|purge|enqueue`.

use anyhow::Context as _;
use courier_core::{Envelope, Topic, TraceContext};
use courier_outbox::{Enqueue, EventFilter, Outbox, Store};

use crate::args::{EnqueueArgs, FilterArgs, OutboxCommand};
use crate::config::Config;
use crate::exit::ensure_usage;
use courier_core::redact_url;

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.clone().into_filter().is_empty()
    }

    fn into_filter(self) -> EventFilter {
        EventFilter {
            ids: self.ids,
            topic: self.topic,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
            error_contains: self.error_contains,
            ..EventFilter::default()
        }
    }
}

/// `courier migrate`: connecting creates or upgrades the tables.
pub async fn migrate(config: &Config) -> anyhow::Result<bool> {
    config.connect_store().await?;
    println!("outbox tables are up to date in {}", redact_url(&config.database.url));
    Ok(true)
}

impl OutboxCommand {
    /// Runs the command against the outbox of `config`.
    pub async fn run(self, config: &Config) -> anyhow::Result<bool> {
        match &self {
            Self::Requeue { filter, all } => {
                ensure_usage!(
                    *all || !filter.is_empty(),
                    "requeue needs a filter (--id, --topic, …) or --all"
                )
            }
            Self::Purge { dead: false, filter, inbox, older_than } => {
                ensure_usage!(filter.is_empty(), "filters apply to `purge --dead` only");
                ensure_usage!(
                    !inbox || older_than.is_some(),
                    "purge --inbox needs --older-than: keep inbox rows longer than the broker may redeliver"
                );
            }
            _ => {}
        }
        let store = config.connect_store().await?;
        let outcome = self.run_on(config, &store).await;
        // The database sees each connection closed rather than dropped.
        store.close().await;
        outcome.map(|()| true)
    }

    async fn run_on(self, config: &Config, store: &Store) -> anyhow::Result<()> {
        match self {
            Self::Stats => stats(store).await?,
            Self::Dead { filter, limit } => list_dead(store, filter.into_filter(), limit).await?,
            Self::Requeue { filter, .. } => {
                let n = store.requeue(&filter.into_filter()).await?;
                println!("{n} dead event(s) requeued");
            }
            Self::Purge { dead: true, filter, .. } => {
                let n = store.discard_dead(&filter.into_filter()).await?;
                println!("{n} dead event(s) discarded");
            }
            Self::Purge { inbox: true, older_than: Some(retention), .. } => {
                let n = store.purge_inbox(retention).await?;
                println!("{n} inbox row(s) older than {} purged", humantime::format_duration(retention));
            }
            Self::Purge { dead: false, older_than, .. } => {
                let retention = older_than.unwrap_or(config.relay.retention);
                let n = store.purge_published(retention).await?;
                println!("{n} published row(s) older than {} purged", humantime::format_duration(retention));
            }
            Self::Enqueue(args) => args.run(config, store).await?,
        }
        Ok(())
    }
}

async fn stats(store: &Store) -> anyhow::Result<()> {
    let s = store.stats().await?;
    println!("pending:            {}", s.pending);
    println!("published:          {}", s.published);
    println!("dead:               {}", s.dead);
    match s.oldest_pending_age {
        Some(age) => println!("oldest pending age: {:.3}s", age.as_secs_f64()),
        None => println!("oldest pending age: -"),
    }
    Ok(())
}

async fn list_dead(store: &Store, filter: EventFilter, limit: u32) -> anyhow::Result<()> {
    let dead = store.list_dead(&filter, limit).await?;
    println!(
        "{:>10}  {:<36}  {:<24}  {:<24}  {:>8}  last error",
        "id", "event_id", "topic", "aggregate_id", "attempts"
    );
    for d in &dead {
        println!(
            "{:>10}  {:<36}  {:<24}  {:<24}  {:>8}  {}",
            d.id,
            d.event_id,
            d.topic,
            d.aggregate_id,
            d.attempts,
            d.last_error.as_deref().unwrap_or("")
        );
    }
    println!("{} dead event(s) listed", dead.len());
    Ok(())
}

impl EnqueueArgs {
    /// Enqueues `--count` events, each in its own transaction.
    async fn run(self, config: &Config, store: &Store) -> anyhow::Result<()> {
        let trace = self
            .traceparent
            .map(|tp| TraceContext::new(tp, None))
            .transpose()
            .map_err(|e| crate::exit::usage(format_args!("invalid --traceparent: {e}")))?;
        let topic = self
            .topic
            .map(Topic::new)
            .transpose()
            .map_err(|e| crate::exit::usage(format_args!("invalid --topic: {e}")))?;
        let outbox = Outbox::new(config.topic_mapper()?).wire_mode(config.bus.wire);
        for i in 0..self.count {
            let aggregate = if self.count == 1 {
                self.aggregate_id.clone()
            } else {
                format!("{}-{}", self.aggregate_id, i % self.aggregates)
            };
            let body = self.payload.clone().unwrap_or_else(|| serde_json::json!({ "n": i }).to_string());
            let mut builder =
                Envelope::builder(self.aggregate_type.as_str(), aggregate, self.event_type.as_str())
                    .payload(body);
            if let Some(trace) = &trace {
                builder = builder.trace(trace.clone());
            }
            // The span lasts while the event is built and stored. Built inside it, the event
            // carries its trace context to the broker (with the `otel` feature). It is not
            // entered while storing: sqlx's SQLite connection thread holds the current span
            // until a moment after it replied, so the span could end after the process flushed
            // its telemetry at exit, and never be exported.
            let span = tracing::info_span!("outbox.enqueue", event_type = %self.event_type);
            let event = span.in_scope(|| builder.build()).context("invalid event")?;
            let mut request = Enqueue::new(&event);
            if let Some(topic) = &topic {
                request = request.topic(topic);
            }
            store.enqueue(&outbox, &[request]).await?;
            drop(span);
        }
        println!("{} event(s) enqueued", self.count);
        Ok(())
    }
}
