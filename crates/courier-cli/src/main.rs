//! The `courier` command line: demo, benchmarks, relay service and outbox administration.

mod admin;
mod args;
mod bench;
mod bus_url;
mod config;
mod dashboard;
mod demo;
mod exit;
mod http;
mod kafka_settings;
mod nats_settings;
mod report;
mod secret;
mod serve;
mod tail;
mod telemetry;
mod topic_settings;

use std::process::ExitCode;

use clap::Parser as _;

/// Publishing allocates small, short-lived buffers per event (headers, envelopes); mimalloc keeps
/// that off the hot path's profile for every backend and baseline alike. Its `override` feature
/// gives the C libraries the same allocator: librdkafka allocates every Kafka message and each of
/// its headers on the publishing thread and frees them on its delivery thread, and glibc's
/// malloc spent a large share of the publishing thread's time on that hand-over.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let config = match cli.command.service().map(config::ServiceArgs::load).transpose() {
        Ok(config) => config,
        Err(error) => return exit::status(Err(exit::UsageError(error).into())),
    };
    let (format, level) =
        config.as_ref().map_or((config::LogFormat::Human, "warn"), |c| (c.log.format, c.log.level.as_str()));
    // The runtime is dropped before `_telemetry`, whose drop flushes the spans not yet sent.
    let outcome = telemetry::init(format, level).and_then(move |_telemetry| {
        // Kubernetes injects such variables for a Service named `courier`.
        let ignored = config.as_ref().map(|c| c.ignored_env.join(", ")).unwrap_or_default();
        if !ignored.is_empty() {
            tracing::debug!(%ignored, "ignoring COURIER_* variables that are not COURIER_<SECTION>__<KEY> overrides");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(cli.command.run(config))
    });
    exit::status(outcome)
}
