//! The plain-channel baseline for the memory bus: the same load (N events of P bytes, W in
//! flight) through a bounded tokio channel whose receiver counts each event as acknowledged, the
//! least an in-process hand-over can cost.

use std::time::Instant;

use bytes::Bytes;

use super::bus::{BusLoad, Tally};
use super::cpu::Clock;
use crate::report::Row;

pub async fn run(load: &BusLoad) -> anyhow::Result<Row> {
    let payload = Bytes::from(vec![b'x'; load.payload]);
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<(usize, Bytes, Instant)>(load.window.max(1));
    let mut tally = Tally::new(load);
    let reader = tokio::spawn(async move {
        let mut sequence = 0;
        while let Some((index, _payload, sent)) = receiver.recv().await {
            sequence += 1;
            tally.success(index, (0, sequence), false, sent.elapsed());
        }
        (tally, Instant::now())
    });
    let clock = Clock::start();
    for index in 0..load.events {
        sender
            .send((index, payload.clone(), Instant::now()))
            .await
            .map_err(|_| anyhow::anyhow!("the baseline channel's receiver stopped"))?;
    }
    drop(sender);
    let (tally, end) = reader.await?;
    Ok(tally.row("memory", "baseline", load, &clock.stop(end)))
}
