//! `courier bench`: measured runs reported as rows, never timed assertions.

pub mod bus;
pub mod chart;
pub mod cpu;
mod e2e;
mod kafka_baseline;
mod matrix;
mod memory_baseline;
mod nats_baseline;
pub mod outbox;
pub mod table;

use crate::args::{BenchBusArgs, BenchOutboxArgs};
use crate::bus_url::{with_bus, BusUrl};
use crate::report::{self, Row};

impl BenchBusArgs {
    /// Runs `--rounds` comparisons of Courier (and the bare client with `--baseline`).
    pub async fn run(self) -> anyhow::Result<bool> {
        let load = bus::BusLoad {
            events: self.events,
            payload: self.payload,
            window: self.window,
            aggregates: self.aggregates,
        };
        let url = self.bus.unwrap_or_else(|| self.backend.default_url());
        let mut rounds = Vec::new();
        for _ in 0..self.rounds {
            let mut rows = vec![with_bus!(url.clone(), |bus| bus::run_courier(&bus, &load, false).await?)];
            if self.baseline {
                rows.extend(run_baseline(&url, &load).await?);
            }
            rounds.push(rows);
        }
        let ratios = [("courier", "baseline"), ("courier", "baseline-payload-only")];
        report::conclude(&rounds, &ratios, self.json.as_deref())
    }
}

impl BenchOutboxArgs {
    /// Runs drain, steady and baseline once.
    pub async fn run(self) -> anyhow::Result<bool> {
        let mut relay = courier_outbox::RelayConfig::default();
        if let Some(interval) = self.poll_interval {
            relay = relay.poll_interval(interval);
        }
        if let Some(interval) = self.busy_poll_interval {
            relay = relay.busy_poll_interval(interval);
        }
        if let Some(retention) = self.retention {
            relay = relay.retention(Some(retention));
        }
        let load = outbox::OutboxLoad {
            events: self.events,
            payload: self.payload,
            aggregates: self.aggregates,
            rate: self.rate,
            duration: self.duration,
            writers: self.writers,
            tx_events: self.tx_events,
            parked: self.parked,
            relay,
            timeout: self.timeout,
        };
        let rows = with_bus!(self.bus, |bus| outbox::run(&bus, self.db.as_deref(), &load).await?);
        report::conclude(&[rows], &[("drain", "baseline")], self.json.as_deref())
    }
}

/// The same load through the bare client library of `url`'s broker (a plain channel for the
/// memory bus), for ratios in one run; the first row is the `baseline` one.
async fn run_baseline(url: &BusUrl, load: &bus::BusLoad) -> anyhow::Result<Vec<Row>> {
    match url {
        BusUrl::Nats(nats) => nats_baseline::run(nats, load).await,
        BusUrl::Memory => Ok(vec![memory_baseline::run(load).await?]),
        BusUrl::Kafka(servers) => kafka_baseline::run(servers, load).await,
    }
}
