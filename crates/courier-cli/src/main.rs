//! The `courier` command line: demo, benchmarks, relay service and outbox administration.

mod bench;
mod bus_url;
mod demo;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::bench::bus::BusLoad;
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(Cli::parse())) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Demo { events, aggregates, bus, timeout_secs } => {
            anyhow::ensure!(events > 0 && aggregates > 0, "--events and --aggregates must be at least 1");
            let options =
                demo::DemoOptions { events, aggregates, timeout: Duration::from_secs(timeout_secs) };
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
            json,
        }) => {
            anyhow::ensure!(events > 0 && window > 0, "--events and --window must be at least 1");
            let load = BusLoad { events, payload, window, aggregates };
            let url = bus.unwrap_or_else(|| backend.default_url());
            let mut rows = vec![with_bus!(url.clone(), |bus| bench::bus::run_courier(&bus, &load).await?)];
            if baseline {
                rows.push(bench::run_baseline(&url, &load).await?);
            }
            for row in &rows {
                row.print();
            }
            if let [courier, bare] = rows.as_slice() {
                println!(
                    "ratio courier/baseline throughput: {:.2}",
                    courier.throughput_eps / bare.throughput_eps
                );
            }
            if let Some(path) = json {
                report::write_json(&path, &rows)?;
            }
            Ok(rows.iter().all(report::Row::is_clean))
        }
    }
}
