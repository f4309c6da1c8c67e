//! The `courier` command line: demo, benchmarks, relay service and outbox administration.

mod admin;
mod bench;
mod bus_url;
mod config;
mod demo;
mod http;
mod report;
mod serve;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::bench::bus::BusLoad;

/// Publishing allocates small, short-lived buffers per event (headers, envelopes); mimalloc keeps
/// that off the hot path's profile for every backend and baseline alike. Its `override` feature
/// gives the C libraries the same allocator: librdkafka allocates every Kafka message and each of
/// its headers on the publishing thread and frees them on its delivery thread, and glibc's
/// malloc spent about a third of the publishing thread's time on that hand-over (Courier's Kafka
/// publish went from about 120k to 165k events/s with it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use crate::bus_url::{with_bus, BusUrl};

#[derive(Parser)]
#[command(
    name = "courier",
    version,
    about = "Event bus with per-event broker ACKs and a transactional outbox"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish and consume events end to end; exits non-zero if any was lost or reordered.
    Demo {
        /// Events to publish.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Aggregates (orders) the events are spread over.
        #[arg(long, default_value_t = 200)]
        aggregates: usize,
        /// Outbox database URL (sqlite://…, postgres://…, mysql://…); default: SQLite in a
        /// temporary directory.
        #[arg(long)]
        db: Option<String>,
        /// Bus URL: memory, nats://host:port or kafka://host:port.
        #[arg(long, default_value = "memory")]
        bus: BusUrl,
        /// Seconds to wait for the last event at the consumer.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the outbox relay as a service (metrics, health, graceful drain on SIGTERM).
    Relay {
        #[command(flatten)]
        service: ServiceArgs,
        /// Bus URL (overrides bus.url).
        #[arg(long)]
        bus: Option<BusUrl>,
        /// Address of /metrics, /healthz and /readyz (overrides http.listen).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Create or upgrade the outbox tables.
    Migrate {
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Inspect and operate the outbox.
    Outbox {
        #[command(flatten)]
        service: ServiceArgs,
        #[command(subcommand)]
        command: admin::OutboxCommand,
    },
}

/// Where the configuration comes from: defaults, then --config, then COURIER_* variables, then
/// these flags.
#[derive(clap::Args)]
struct ServiceArgs {
    /// TOML configuration file (every key is documented in reference.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Database URL (overrides database.url).
    #[arg(long, global = true)]
    db: Option<String>,
}

impl ServiceArgs {
    fn load(&self) -> anyhow::Result<config::Config> {
        let mut config = config::Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(db) = &self.db {
            config.database.url = db.clone();
        }
        Ok(config)
    }
}

async fn connect_store(config: &config::Config) -> anyhow::Result<courier_outbox::Store> {
    let url = &config.database.url;
    let store = courier_outbox::Store::connect(url).await.with_context(|| format!("connecting to {url}"))?;
    store.migrate().await.with_context(|| format!("migrating the outbox tables in {url}"))?;
    Ok(store)
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Publish through a bus with per-event ACK results.
    Bus {
        #[arg(long, value_enum)]
        backend: Backend,
        /// Bus URL; defaults to nats://127.0.0.1:4222 or kafka://127.0.0.1:9092 by backend.
        #[arg(long)]
        bus: Option<BusUrl>,
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 1024)]
        payload: usize,
        /// In-flight window.
        #[arg(long, default_value_t = 4096)]
        window: usize,
        /// Aggregates the events are spread over (for order checks).
        #[arg(long, default_value_t = 1000)]
        aggregates: usize,
        /// Also run the same load through the bare client library.
        #[arg(long)]
        baseline: bool,
        /// Runs of the whole comparison, one after another; ratios are reported per round and
        /// as their median.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Write the rows as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Relay an outbox to a bus: backlog drain rate, steady commit→ACK latency at a fixed
    /// offered rate, and the bare-SQL claim+mark ceiling, each on a fresh database.
    Outbox {
        /// Database server or file (postgres://…, mysql://…, sqlite://…); each run creates and
        /// drops a database of its own there. Default: SQLite in a temporary directory.
        #[arg(long)]
        db: Option<String>,
        /// Bus URL: memory, nats://host:port or kafka://host:port.
        #[arg(long, default_value = "memory")]
        bus: BusUrl,
        #[arg(long, default_value_t = 50_000)]
        events: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 1024)]
        payload: usize,
        /// Aggregates the events are spread over (for order checks).
        #[arg(long, default_value_t = 1000)]
        aggregates: usize,
        /// Offered events/s of the steady run; default half the measured drain rate.
        #[arg(long)]
        rate: Option<f64>,
        /// Longest steady run; it offers at most --events events.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Concurrent business writers (and their connections) of the steady run.
        #[arg(long, default_value_t = 32)]
        writers: usize,
        /// Events per transaction of the steady run (consecutive events, distinct aggregates).
        #[arg(long, default_value_t = 1)]
        tx_events: usize,
        /// The idle relay's polling interval (default: the relay's own).
        #[arg(long, value_parser = humantime::parse_duration)]
        poll_interval: Option<Duration>,
        /// The relay's polling interval while rows keep arriving (default: the relay's own).
        #[arg(long, value_parser = humantime::parse_duration)]
        busy_poll_interval: Option<Duration>,
        /// How long the relay keeps published rows (default: the relay's own); 0s deletes each
        /// row as its ACK is recorded.
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<Duration>,
        /// Seconds to wait for the last ACK of a run before counting the rest as lost.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
        /// Write the rows as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Memory,
    Nats,
    Kafka,
}

impl Backend {
    fn default_url(self) -> BusUrl {
        match self {
            Self::Memory => BusUrl::Memory,
            Self::Nats => BusUrl::Nats("nats://127.0.0.1:4222".into()),
            Self::Kafka => BusUrl::Kafka("127.0.0.1:9092".into()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let service = match &cli.command {
        Command::Relay { service, .. } | Command::Migrate { service } | Command::Outbox { service, .. } => {
            Some(service.load())
        }
        _ => None,
    }
    .transpose();
    let outcome = service.and_then(|service| {
        let (format, level) = service
            .as_ref()
            .map_or((config::LogFormat::Human, "warn"), |c| (c.log.format, c.log.level.as_str()));
        let _telemetry = telemetry::init(format, level)?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(run(cli, service))
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli, service: Option<config::Config>) -> anyhow::Result<bool> {
    match cli.command {
        Command::Relay { bus, listen, .. } => {
            let mut config = service.expect("loaded above");
            if let Some(bus) = bus {
                config.bus.url = bus;
            }
            if let Some(listen) = listen {
                config.http.listen = listen;
            }
            let store = connect_store(&config).await?;
            let (url, wire) = (config.bus.url.clone(), config.bus.wire);
            with_bus!(url, wire, |bus| serve::run(config, store, bus).await)
        }
        Command::Migrate { .. } => {
            let config = service.expect("loaded above");
            connect_store(&config).await?;
            println!("outbox tables are up to date in {}", config.database.url);
            Ok(true)
        }
        Command::Outbox { command, .. } => {
            let config = service.expect("loaded above");
            let store = connect_store(&config).await?;
            admin::run(command, &config, &store).await
        }
        Command::Demo { events, aggregates, db, bus, timeout_secs } => {
            anyhow::ensure!(events > 0 && aggregates > 0, "--events and --aggregates must be at least 1");
            let options =
                demo::DemoOptions { events, aggregates, db, timeout: Duration::from_secs(timeout_secs) };
            with_bus!(bus, |bus| demo::run(bus, options).await)
        }
        Command::Bench(BenchCommand::Bus {
            backend,
            bus,
            events,
            payload,
            window,
            aggregates,
            baseline,
            rounds: rounds_wanted,
            json,
        }) => {
            anyhow::ensure!(
                events > 0 && window > 0 && rounds_wanted > 0,
                "--events, --window and --rounds must be at least 1"
            );
            let load = BusLoad { events, payload, window, aggregates };
            let url = bus.unwrap_or_else(|| backend.default_url());
            let mut rounds = Vec::new();
            for _ in 0..rounds_wanted {
                let mut rows =
                    vec![with_bus!(url.clone(), |bus| bench::bus::run_courier(&bus, &load).await?)];
                if baseline {
                    rows.extend(bench::run_baseline(&url, &load).await?);
                }
                rounds.push(rows);
            }
            let ratios = [("courier", "baseline"), ("courier", "baseline-payload-only")];
            report::conclude(&rounds, &ratios, json.as_deref())
        }
        Command::Bench(BenchCommand::Outbox {
            db,
            bus,
            events,
            payload,
            aggregates,
            rate,
            duration,
            writers,
            tx_events,
            poll_interval,
            busy_poll_interval,
            retention,
            timeout_secs,
            json,
        }) => {
            anyhow::ensure!(events > 0 && aggregates > 0, "--events and --aggregates must be at least 1");
            let mut relay = courier_outbox::RelayConfig::default();
            if let Some(interval) = poll_interval {
                relay = relay.poll_interval(interval);
            }
            if let Some(interval) = busy_poll_interval {
                relay = relay.busy_poll_interval(interval);
            }
            if let Some(retention) = retention {
                relay = relay.retention(Some(retention));
            }
            let load = bench::outbox::OutboxLoad {
                events,
                payload,
                aggregates,
                rate,
                duration,
                writers,
                tx_events,
                relay,
                timeout: Duration::from_secs(timeout_secs),
            };
            let rows = with_bus!(bus, |bus| bench::outbox::run(&bus, db.as_deref(), &load).await?);
            report::conclude(&[rows], &[("drain", "baseline")], json.as_deref())
        }
    }
}
