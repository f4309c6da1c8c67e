//! `courier bench`: measured runs reported as rows (DESIGN.md §6), never timed assertions.

pub mod bus;
mod kafka_baseline;
mod nats_baseline;
pub mod outbox;

use crate::bus_url::BusUrl;
use crate::report::Row;

/// The same load through the bare client library of `url`'s broker, for ratios in one run: the
/// first row is the bare client sending key (or subject) and payload only.
pub async fn run_baseline(url: &BusUrl, load: &bus::BusLoad) -> anyhow::Result<Vec<Row>> {
    match url {
        BusUrl::Nats(nats) => Ok(vec![nats_baseline::run(nats, load).await?]),
        BusUrl::Memory => {
            anyhow::bail!("--baseline compares against a broker's bare client; the memory bus has none")
        }
        BusUrl::Kafka(servers) => kafka_baseline::run(servers, load).await,
    }
}
