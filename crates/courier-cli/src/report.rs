//! Benchmark rows (the JSON of `--json FILE`) and latency summaries.

use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One measured run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub backend: String,
    /// `courier` or `baseline` for bus runs; `drain`, `steady` or `baseline` for outbox runs.
    pub mode: String,
    pub events: u64,
    pub payload_bytes: u64,
    pub throughput_eps: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_max_ms: Option<f64>,
    pub lost: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_p99_ms: Option<f64>,
    /// Events a consumer group handled per second, first publish to last event handled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_throughput_eps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks_leaked: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// This process's user+sys CPU time over the measured span, per event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_event: Option<f64>,
    /// The whole machine's busy CPU time over the measured span (brokers and databases
    /// included), per event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu_us_per_event: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// Which round of a repeated comparison the row belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    /// Offered events/s of an open-loop (`steady`) run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_eps: Option<f64>,
}

impl Row {
    /// Whether the run lost, duplicated or reordered anything.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.order_violations == 0
    }

    /// Sets the CPU figures of `span`, divided over this row's events.
    pub fn with_cpu(mut self, span: &crate::bench::cpu::Span) -> Self {
        self.cpu_us_per_event = Some(span.cpu_us_per_event(self.events));
        self.machine_cpu_us_per_event = span.machine_cpu_us_per_event(self.events);
        self
    }

    pub fn print(&self) {
        println!(
            "{:<8} {:<16} events={:<8} payload={}B  {:>10.0} ev/s  ack p50={:.2}ms p99={:.2}ms  lost={} dup={} order_violations={}{}",
            self.backend,
            self.mode,
            self.events,
            self.payload_bytes,
            self.throughput_eps,
            self.ack_p50_ms,
            self.ack_p99_ms,
            self.lost,
            self.duplicates,
            self.order_violations,
            self.e2e_p50_ms
                .zip(self.e2e_p99_ms)
                .map(|(p50, p99)| format!("  e2e p50={p50:.2}ms p99={p99:.2}ms"))
                .unwrap_or_default(),
        );
    }
}

/// Prints the rows of each round and, for each `(a, b)` pair of modes, the throughput ratio of
/// row a to row b within each round that has both (with their median over several rounds: a
/// shared machine's figures drift from run to run, a ratio within one round much less). Writes
/// the JSON file when asked and says whether no row lost, duplicated or reordered anything.
pub fn conclude(rounds: &[Vec<Row>], ratios: &[(&str, &str)], json: Option<&Path>) -> anyhow::Result<bool> {
    for row in rounds.iter().flatten() {
        row.print();
    }
    for &(a, b) in ratios {
        let mut each: Vec<f64> = rounds
            .iter()
            .filter_map(|round| {
                let throughput =
                    |mode| round.iter().find(|row| row.mode == mode).map(|row| row.throughput_eps);
                Some(throughput(a)? / throughput(b)?)
            })
            .collect();
        let listed = each.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ");
        each.sort_by(f64::total_cmp);
        match each.len() {
            0 => {}
            1 => println!("ratio {a}/{b} throughput: {listed}"),
            n => println!("ratio {a}/{b} throughput: median {:.2} over {n} rounds ({listed})", median(&each)),
        }
    }
    let rows: Vec<&Row> = rounds.iter().flatten().collect();
    if let Some(path) = json {
        write_json(path, &rows)?;
    }
    Ok(rows.iter().all(|row| row.is_clean()))
}

/// The median of sorted, non-empty `values`.
pub fn median(values: &[f64]) -> f64 {
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Writes `{"rows":[...]}` to `path`.
fn write_json(path: &Path, rows: &[&Row]) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(&serde_json::json!({ "rows": rows }))?;
    std::fs::write(path, json + "\n").map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// A latency histogram with microsecond resolution up to one hour.
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
    }

    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.quantile_us(q) / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.max() as f64 / 1000.0
    }
}

/// Resets the peak resident set size to the current one (Linux 4.0 and later), so the next
/// run's peak is its own and not the largest of all runs before it; elsewhere a no-op.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set size (VmHWM), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
