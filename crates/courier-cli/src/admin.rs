//! Outbox administration: `courier migrate` and `courier outbox stats|dead|requeue|purge|enqueue`.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use courier_core::{Envelope, Topic, TraceContext};
use courier_outbox::{DeadFilter, Enqueue, Outbox, Store};

use crate::config::Config;

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Row counts by status and the age of the oldest pending event.
    Stats,
    /// List dead events.
    Dead {
        #[command(flatten)]
        filter: FilterArgs,
        /// Most rows to list.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Put dead events back to pending so the relay publishes them again.
    Requeue {
        #[command(flatten)]
        filter: FilterArgs,
        /// Requeue every dead event (required when no filter is given).
        #[arg(long)]
        all: bool,
    },
    /// Delete published rows older than the retention, or dead rows with --dead.
    Purge {
        /// Keep published rows younger than this (e.g. 1h, 7d); default: relay.retention.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Discard dead events matching the filter instead (they will never be published).
        #[arg(long)]
        dead: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Enqueue events, each in its own transaction (for scripts and smoke tests).
    Enqueue {
        /// Topic; default: mapped from the aggregate type by the [topics] configuration.
        #[arg(long)]
        topic: Option<String>,
        #[arg(long, default_value = "cli")]
        aggregate_type: String,
        #[arg(long)]
        aggregate_id: String,
        #[arg(long)]
        event_type: String,
        /// Payload text; default: a small JSON document with the event's number.
        #[arg(long)]
        payload: Option<String>,
        /// Events to generate, spread over --aggregates aggregates named <aggregate-id>-<n>.
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        aggregates: usize,
        /// W3C trace context to carry to the broker headers (00-<trace id>-<span id>-<flags>).
        #[arg(long)]
        traceparent: Option<String>,
    },
}

/// Selects dead events; no flag selects all.
#[derive(Args, Debug, Default)]
pub struct FilterArgs {
    /// Row ids (repeatable).
    #[arg(long = "id")]
    ids: Vec<i64>,
    #[arg(long)]
    topic: Option<String>,
    #[arg(long = "filter-aggregate-type")]
    aggregate_type: Option<String>,
    #[arg(long = "filter-aggregate-id")]
    aggregate_id: Option<String>,
    #[arg(long = "filter-event-type")]
    event_type: Option<String>,
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.topic.is_none()
            && self.aggregate_type.is_none()
            && self.aggregate_id.is_none()
            && self.event_type.is_none()
    }

    fn into_filter(self) -> DeadFilter {
        DeadFilter {
            ids: self.ids,
            topic: self.topic,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
        }
    }
}

pub async fn run(command: OutboxCommand, config: &Config, store: &Store) -> anyhow::Result<bool> {
    match command {
        OutboxCommand::Stats => {
            let s = store.stats().await?;
            println!("pending:            {}", s.pending);
            println!("published:          {}", s.published);
            println!("dead:               {}", s.dead);
            match s.oldest_pending_age {
                Some(age) => println!("oldest pending age: {:.3}s", age.as_secs_f64()),
                None => println!("oldest pending age: -"),
            }
        }
        OutboxCommand::Dead { filter, limit } => {
            let dead = store.list_dead(&filter.into_filter(), limit).await?;
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
        }
        OutboxCommand::Requeue { filter, all } => {
            anyhow::ensure!(all || !filter.is_empty(), "requeue needs a filter (--id, --topic, …) or --all");
            let n = store.requeue(&filter.into_filter()).await?;
            println!("{n} dead event(s) requeued");
        }
        OutboxCommand::Purge { older_than, dead, filter } => {
            if dead {
                let n = store.discard_dead(&filter.into_filter()).await?;
                println!("{n} dead event(s) discarded");
            } else {
                anyhow::ensure!(filter.is_empty(), "filters apply to --dead only");
                let retention = older_than.unwrap_or(config.relay.retention);
                let n = store.purge_published(retention).await?;
                println!("{n} published row(s) older than {} purged", humantime::format_duration(retention));
            }
        }
        OutboxCommand::Enqueue {
            topic,
            aggregate_type,
            aggregate_id,
            event_type,
            payload,
            count,
            aggregates,
            traceparent,
        } => {
            anyhow::ensure!(count > 0 && aggregates > 0, "--count and --aggregates must be at least 1");
            let trace = traceparent
                .map(|tp| TraceContext::new(tp, None))
                .transpose()
                .context("invalid --traceparent")?;
            let outbox = Outbox::new(config.topic_mapper()?);
            let topic = topic.map(Topic::new).transpose().context("invalid --topic")?;
            for i in 0..count {
                let aggregate = if count == 1 {
                    aggregate_id.clone()
                } else {
                    format!("{aggregate_id}-{}", i % aggregates)
                };
                let body = payload.clone().unwrap_or_else(|| serde_json::json!({ "n": i }).to_string());
                let mut builder =
                    Envelope::builder(aggregate_type.as_str(), aggregate, event_type.as_str()).payload(body);
                if let Some(trace) = &trace {
                    builder = builder.trace(trace.clone());
                }
                // Built inside its span, so with the `otel` feature the event carries that span's
                // trace context to the broker.
                let span = tracing::info_span!("outbox.enqueue", event_type = %event_type);
                let event = span.in_scope(|| builder.build()).context("invalid event")?;
                let mut request = Enqueue::new(&event);
                if let Some(topic) = &topic {
                    request = request.topic(topic);
                }
                tracing::Instrument::instrument(store.enqueue(&outbox, &[request]), span).await?;
            }
            println!("{count} event(s) enqueued");
        }
    }
    Ok(true)
}
