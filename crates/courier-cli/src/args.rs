//! The command line, as one tree of clap types; each subcommand's `run` lives in the module that
//! does its work (`demo`, `bench`, `serve`, `admin`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use courier_core::{StartAt, Topic};

use crate::bus_url::BusUrl;
use crate::config::ServiceArgs;

/// Event bus with per-event broker ACKs and a transactional outbox.
#[derive(Parser)]
#[command(name = "courier", version, after_help = crate::exit::STATUSES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Publish and consume events end to end; exits 1 if any was lost or reordered.
    Demo(DemoArgs),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the outbox relay as a service (metrics, health, graceful drain on SIGTERM).
    Relay(RelayArgs),
    /// Create or upgrade the outbox tables.
    Migrate(MigrateArgs),
    /// Inspect and operate the outbox.
    Outbox(OutboxArgs),
    /// Print a topic's messages as they arrive, like `nats sub` or `kcat -C`.
    Tail(TailArgs),
    /// Serve the operator dashboard (/ui) and its JSON API (/api/v1) without running a relay.
    Dashboard(DashboardArgs),
}

impl Command {
    /// Where the configuration of a service command (relay, migrate, outbox) comes from.
    pub fn service(&self) -> Option<&ServiceArgs> {
        match self {
            Self::Relay(args) => Some(&args.service),
            Self::Migrate(args) => Some(&args.service),
            Self::Outbox(args) => Some(&args.service),
            Self::Dashboard(args) => Some(&args.service),
            Self::Demo(_) | Self::Bench(_) | Self::Tail(_) => None,
        }
    }

    /// Runs the command; `Ok(false)` means it finished but found lost or reordered events.
    /// `config` is the loaded configuration of a service command.
    pub async fn run(self, config: Option<crate::config::Config>) -> anyhow::Result<bool> {
        let config = || config.expect("service commands load their configuration first");
        match self {
            Self::Demo(args) => args.run().await,
            Self::Bench(BenchCommand::Bus(args)) => args.run().await,
            Self::Bench(BenchCommand::Outbox(args)) => args.run().await,
            Self::Bench(BenchCommand::Report(args)) => args.run().await,
            Self::Relay(args) => args.run(config()).await,
            Self::Migrate(_) => crate::admin::migrate(&config()).await,
            Self::Outbox(args) => args.command.run(&config()).await,
            Self::Tail(args) => args.run().await,
            Self::Dashboard(args) => crate::dashboard::run(args, config()).await,
        }
    }
}

/// `courier demo`.
#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Events to publish.
    #[arg(long, default_value_t = 20_000, value_parser = at_least_one)]
    pub events: usize,
    /// Aggregates (orders) the events are spread over.
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
    pub aggregates: usize,
    /// Outbox database URL (sqlite://…, postgres://…, mysql://…); default: SQLite in a
    /// temporary directory.
    #[arg(long)]
    pub db: Option<String>,
    /// Bus URL: memory, nats://host:port or kafka://host:port.
    #[arg(long, default_value = "memory")]
    pub bus: BusUrl,
    /// How long to wait for the last event at the consumer (e.g. 30s, 2m); events not seen by
    /// then count as lost.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `courier tail`.
#[derive(Args)]
pub struct TailArgs {
    /// Bus URL: nats://host:port or kafka://host:port[,host:port].
    #[arg(long)]
    pub bus: BusUrl,
    /// The topic to read.
    #[arg(value_parser = crate::tail::topic_arg)]
    pub topic: Topic,
    /// Read as member of this consumer group, acknowledging each message once printed, so the
    /// group's next reader resumes after it. Without it the reader is ephemeral and moves no
    /// group's position.
    #[arg(long)]
    pub group: Option<String>,
    /// Where to start: `start`, `new`, an RFC 3339 UTC time (2026-12-01T14:00:00Z) or a duration
    /// ago (10m). In a group it applies only when the group has no position yet.
    #[arg(long, default_value = "new", value_parser = crate::tail::start_arg)]
    pub from: StartAt,
    /// Exit after printing this many messages.
    #[arg(long, value_parser = at_least_one)]
    pub limit: Option<usize>,
    /// Print one JSON object per line; the payload is UTF-8 text when valid, else base64
    /// (`payload_encoding` says which).
    #[arg(long)]
    pub json: bool,
}

/// `courier bench …`.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Publish through a bus with per-event ACK results.
    Bus(BenchBusArgs),
    /// Relay an outbox to a bus: backlog drain rate, steady commit→ACK latency at a fixed
    /// offered rate, and the bare-SQL claim+mark ceiling, each on a fresh database.
    Outbox(BenchOutboxArgs),
    /// The published comparison: memory, NATS and Kafka by pressure level with a consumer group
    /// and against their bare clients, and the outbox for every database and bus; prints
    /// Markdown, writes JSON rows and SVG charts.
    Report(BenchReportArgs),
}

/// `courier bench report`.
#[derive(Args)]
pub struct BenchReportArgs {
    /// A reduced matrix for a check in about two minutes: levels 500 and 2,000, 5,000 events
    /// against the bare clients, 2,000-event drains and 2 s steady runs.
    #[arg(long)]
    pub quick: bool,
    /// Pressure levels, events per bus run (comma-separated); default
    /// 500,2000,5000,10000,100000,1000000 (--quick: 500,2000).
    #[arg(long, value_delimiter = ',', value_parser = at_least_one)]
    pub levels: Vec<usize>,
    /// Run only this part of the matrix.
    #[arg(long, value_enum)]
    pub only: Option<ReportPart>,
    /// Buses of the bus matrix (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "memory,nats,kafka")]
    pub backends: Vec<Backend>,
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats: BusUrl,
    /// The Kafka bootstrap servers.
    #[arg(long, default_value = "kafka://127.0.0.1:9092")]
    pub kafka: BusUrl,
    /// Events of the runs of Courier against the bare clients; default 100,000 (--quick: 5,000).
    #[arg(long, value_parser = at_least_one)]
    pub compare_events: Option<usize>,
    /// Rounds of Courier against the bare clients, each a Courier run and a bare run back to
    /// back (who goes first alternates); the report gives each round's ratio and their median.
    /// Default 3 (--quick: 1).
    #[arg(long, value_parser = at_least_one)]
    pub rounds: Option<usize>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// In-flight window of the bus runs.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one)]
    pub window: usize,
    /// Databases of the outbox matrix (comma-separated); each run creates and drops a database
    /// of its own there; `sqlite` is a file in a temporary directory.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "postgres://postgres@127.0.0.1/postgres,mysql://root@127.0.0.1/test,sqlite"
    )]
    pub dbs: Vec<String>,
    /// Buses of the outbox matrix (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "nats,kafka,memory")]
    pub outbox_buses: Vec<Backend>,
    /// Backlog of each outbox drain and bare-SQL baseline; default 50,000 (--quick: 2,000).
    #[arg(long, value_parser = at_least_one)]
    pub outbox_events: Option<usize>,
    /// Offered rates of the open-loop steady runs, events/s (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,4000")]
    pub rates: Vec<f64>,
    /// Length of each steady run; default 10s (--quick: 2s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub steady: Option<Duration>,
    /// Events per transaction of the steady runs.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub tx_events: usize,
    /// Write the rows (and failures) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the SVG charts (bus-throughput.svg, bus-latency.svg) into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `courier bench bus`.
#[derive(Args)]
pub struct BenchBusArgs {
    /// Which bus to measure.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// Bus URL; defaults to nats://127.0.0.1:4222 or kafka://127.0.0.1:9092 by backend.
    #[arg(long)]
    pub bus: Option<BusUrl>,
    /// Events to publish per run.
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one)]
    pub events: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// In-flight window: events accepted and awaiting their verdict at once.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one)]
    pub window: usize,
    /// Aggregates the events are spread over (for order checks).
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    pub aggregates: usize,
    /// Also run the same load through the bare client library.
    #[arg(long)]
    pub baseline: bool,
    /// Runs of the whole comparison, one after another; ratios are reported per round and as
    /// their median.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub rounds: usize,
    /// Write the rows as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The two halves of `courier bench report`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportPart {
    /// Memory, NATS and Kafka by pressure level and against their bare clients.
    Bus,
    /// Each database with each bus through the outbox relay.
    Outbox,
}

/// The buses `courier bench bus` measures.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Backend {
    /// The in-process memory bus.
    Memory,
    /// NATS JetStream.
    Nats,
    /// Kafka.
    Kafka,
}

impl Backend {
    /// The name used in rows and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Nats => "nats",
            Self::Kafka => "kafka",
        }
    }

    /// The broker on this machine that a run without `--bus` measures.
    pub fn default_url(self) -> BusUrl {
        match self {
            Self::Memory => BusUrl::Memory,
            Self::Nats => BusUrl::Nats("nats://127.0.0.1:4222".into()),
            Self::Kafka => BusUrl::Kafka("127.0.0.1:9092".into()),
        }
    }
}

/// `courier bench outbox`.
#[derive(Args)]
pub struct BenchOutboxArgs {
    /// Database server or file (postgres://…, mysql://…, sqlite://…); each run creates and
    /// drops a database of its own there. Default: SQLite in a temporary directory.
    #[arg(long)]
    pub db: Option<String>,
    /// Bus URL: memory, nats://host:port or kafka://host:port.
    #[arg(long, default_value = "memory")]
    pub bus: BusUrl,
    /// Events of the backlog drained, and the most the steady run offers.
    #[arg(long, default_value_t = 50_000, value_parser = at_least_one)]
    pub events: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// Aggregates the events are spread over (for order checks).
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    pub aggregates: usize,
    /// Offered events/s of the steady run; default half the measured drain rate.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Longest steady run; it offers at most --events events.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent business writers (and their connections) of the steady run.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    pub writers: usize,
    /// Events per transaction of the steady run (consecutive events, distinct aggregates).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub tx_events: usize,
    /// Before the drain and steady runs, park this many pending events behind one dead event of
    /// an aggregate of their own (enqueued before the measured events), to show what a parked
    /// backlog costs the healthy aggregates.
    #[arg(long, default_value_t = 0)]
    pub parked: usize,
    /// The idle relay's polling interval (default: the relay's own).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// The relay's polling interval while rows keep arriving (default: the relay's own).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub busy_poll_interval: Option<Duration>,
    /// How long the relay keeps published rows (default: the relay's own); 0s deletes each row
    /// as its ACK is recorded.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
    /// How long to wait for the last ACK of a run before counting the rest as lost.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Write the rows as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `courier relay`.
#[derive(Args)]
pub struct RelayArgs {
    /// Where the configuration comes from.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Bus URL (overrides bus.url).
    #[arg(long)]
    pub bus: Option<BusUrl>,
    /// Address of /metrics, /healthz, /readyz and the dashboard (overrides http.listen).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

/// `courier dashboard`.
#[derive(Args)]
pub struct DashboardArgs {
    /// Where the configuration comes from (the database, and http.admin_token for changes).
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Address to serve the dashboard on; keep it on 127.0.0.1 unless a proxy in front
    /// authenticates operators (reading needs no token).
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub listen: std::net::SocketAddr,
}

/// `courier migrate`.
#[derive(Args)]
pub struct MigrateArgs {
    /// Where the configuration comes from.
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// `courier outbox …`.
#[derive(Args)]
pub struct OutboxArgs {
    /// Where the configuration comes from.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// What to do with the outbox.
    #[command(subcommand)]
    pub command: OutboxCommand,
}

/// The outbox administration commands.
#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Row counts by status and the age of the oldest pending event.
    Stats,
    /// List dead events.
    Dead {
        /// Which dead events.
        #[command(flatten)]
        filter: FilterArgs,
        /// Most rows to list.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Put dead events back to pending so the relay publishes them again.
    Requeue {
        /// Which dead events.
        #[command(flatten)]
        filter: FilterArgs,
        /// Requeue every dead event (required when no filter is given).
        #[arg(long)]
        all: bool,
    },
    /// Delete published rows older than the retention, dead rows with --dead, or idempotent
    /// consumers' inbox rows with --inbox.
    Purge {
        /// Keep rows younger than this (e.g. 1h, 7d); default for published rows: relay.retention.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Discard dead events matching the filter instead (they will never be published).
        #[arg(long)]
        dead: bool,
        /// Delete the inbox rows (courier_inbox) of every consumer processed before --older-than
        /// instead; an event delivered again after its row is gone is processed again.
        #[arg(long, conflicts_with = "dead")]
        inbox: bool,
        /// Which dead events, with --dead.
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Enqueue events, each in its own transaction (for scripts and smoke tests).
    Enqueue(EnqueueArgs),
}

/// `courier outbox enqueue`.
#[derive(Args)]
pub struct EnqueueArgs {
    /// Topic; default: mapped from the aggregate type by the [topics] configuration.
    #[arg(long)]
    pub topic: Option<String>,
    /// Aggregate type of the events (also what [topics] maps to a topic).
    #[arg(long, default_value = "cli")]
    pub aggregate_type: String,
    /// Aggregate id, the ordering key; with --count > 1 a prefix, see --aggregates.
    #[arg(long)]
    pub aggregate_id: String,
    /// Event type.
    #[arg(long)]
    pub event_type: String,
    /// Payload text; default: a small JSON document with the event's number.
    #[arg(long)]
    pub payload: Option<String>,
    /// Events to generate, spread over --aggregates aggregates named <aggregate-id>-<n>.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub count: usize,
    /// Aggregates the --count events are spread over.
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    pub aggregates: usize,
    /// W3C trace context to carry to the broker headers (00-<trace id>-<span id>-<flags>).
    #[arg(long)]
    pub traceparent: Option<String>,
}

/// Selects dead events; no flag selects all.
#[derive(Args, Debug, Default, Clone)]
pub struct FilterArgs {
    /// Row ids (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<i64>,
    /// Only events of this topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Only events of this aggregate type.
    #[arg(long = "filter-aggregate-type")]
    pub aggregate_type: Option<String>,
    /// Only events of this aggregate id.
    #[arg(long = "filter-aggregate-id")]
    pub aggregate_id: Option<String>,
    /// Only events of this event type.
    #[arg(long = "filter-event-type")]
    pub event_type: Option<String>,
    /// Only events whose last error contains this text.
    #[arg(long = "filter-error")]
    pub error_contains: Option<String>,
}

/// A count that must be at least 1, refused by clap as a usage error otherwise.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every flag and argument of every subcommand says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "courier", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn counts_below_one_are_usage_errors() {
        let error = Cli::try_parse_from(["courier", "demo", "--events", "0"]).err().unwrap();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("--events"), "{error}");
    }
}
