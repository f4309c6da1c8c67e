//! `courier bench report`: the bus matrix (memory, NATS, Kafka × pressure levels, each with a
//! consumer group, then Courier against the bare client) and the outbox matrix (database × bus:
//! drain, open-loop steady runs, bare-SQL baseline), run with the same code as `bench bus` and
//! `bench outbox`. A part that fails is recorded and the rest still runs.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use courier_core::{redact_url, Bus};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::bus::{self, BusLoad};
use super::chart::{self, Series};
use super::outbox::{self, OutboxLoad, Server};
use super::table::{self, Failure, PUBLISH_ONLY};
use crate::args::{Backend, BenchReportArgs, ReportPart};
use crate::bus_url::{with_bus, BusUrl};
use crate::report::{reset_peak_rss, Row};

/// Events of the warm-up run before each backend's levels: connections, streams and the
/// consumer path are up before anything is measured.
const WARM_UP_EVENTS: usize = 1000;

/// What one report measures, resolved from the flags and `--quick`.
struct Plan {
    levels: Vec<usize>,
    backends: Vec<(Backend, BusUrl)>,
    compare_events: usize,
    rounds: usize,
    payload: usize,
    window: usize,
    dbs: Vec<String>,
    outbox_buses: Vec<(Backend, BusUrl)>,
    outbox: OutboxLoad,
    rates: Vec<f64>,
    steady: Duration,
}

impl Plan {
    fn new(args: &BenchReportArgs) -> Self {
        let quick = args.quick;
        let levels = match (&args.levels, quick) {
            (levels, _) if !levels.is_empty() => levels.clone(),
            (_, true) => vec![500, 2_000],
            (_, false) => vec![500, 2_000, 5_000, 10_000, 100_000, 1_000_000],
        };
        let url = |backend: Backend| match backend {
            Backend::Memory => BusUrl::Memory,
            Backend::Nats => args.nats.clone(),
            Backend::Kafka => args.kafka.clone(),
        };
        let outbox_events = args.outbox_events.unwrap_or(if quick { 2_000 } else { 50_000 });
        let runs = |part| args.only.is_none_or(|only| only == part);
        Self {
            levels,
            backends: if runs(ReportPart::Bus) {
                args.backends.iter().map(|&b| (b, url(b))).collect()
            } else {
                Vec::new()
            },
            compare_events: args.compare_events.unwrap_or(if quick { 5_000 } else { 100_000 }),
            rounds: args.rounds.unwrap_or(if quick { 1 } else { 3 }),
            payload: args.payload,
            window: args.window,
            dbs: if runs(ReportPart::Outbox) { args.dbs.clone() } else { Vec::new() },
            outbox_buses: args.outbox_buses.iter().map(|&b| (b, url(b))).collect(),
            outbox: OutboxLoad {
                events: outbox_events,
                payload: args.payload,
                aggregates: (outbox_events / 10).max(args.tx_events),
                rate: None,
                duration: Duration::ZERO,
                writers: 32,
                tx_events: args.tx_events,
                parked: 0,
                relay: courier_outbox::RelayConfig::default(),
                timeout: if quick { Duration::from_secs(60) } else { Duration::from_secs(300) },
            },
            rates: args.rates.clone(),
            steady: args.steady.unwrap_or(Duration::from_secs(if quick { 2 } else { 10 })),
        }
    }

    /// The bus load of `events` events: aggregates are a tenth of the events, as in the seeds.
    fn bus_load(&self, events: usize) -> BusLoad {
        BusLoad { events, payload: self.payload, window: self.window, aggregates: (events / 10).max(1) }
    }

    /// The steps the progress bar counts.
    fn steps(&self) -> u64 {
        let bus = self.backends.len() * (1 + self.levels.len() + self.rounds);
        let outbox = self.dbs.len() * (self.outbox_buses.len() * (1 + self.rates.len()) + 1);
        (bus + outbox) as u64
    }
}

/// The rows and failures so far, and the progress bar on stderr.
struct Runs {
    rows: Vec<Row>,
    failures: Vec<Failure>,
    progress: ProgressBar,
}

impl Runs {
    /// Runs one step of the matrix; its rows are kept, or its failure recorded.
    async fn step(&mut self, what: String, run: impl Future<Output = anyhow::Result<Vec<Row>>>) {
        self.progress.set_message(what.clone());
        reset_peak_rss();
        match run.await {
            Ok(rows) => {
                for row in &rows {
                    self.say(format!(
                        "{what}: {} {:.0} ev/s, ACK p99 {:.2} ms, lost {} dup {} order {}",
                        row.mode,
                        row.throughput_eps,
                        row.ack_p99_ms,
                        row.lost,
                        row.duplicates,
                        row.order_violations
                    ));
                }
                self.rows.extend(rows);
            }
            Err(error) => self.fail(what, &error),
        }
        self.progress.inc(1);
    }

    /// A line on stderr, above the bar; without a terminal there is no bar, so a plain line.
    fn say(&self, line: String) {
        if self.progress.is_hidden() {
            eprintln!("{line}");
        } else {
            self.progress.println(line);
        }
    }

    fn fail(&mut self, what: String, error: &anyhow::Error) {
        let error = crate::exit::render(error);
        self.say(format!("{what}: FAILED: {error}"));
        self.failures.push(Failure { what, error });
    }

    /// Warm-up, every level with a consumer group, then Courier publish-only against the bare
    /// client at the comparison size.
    async fn bus_levels<B: Bus>(&mut self, plan: &Plan, bus: &B, url: &BusUrl) {
        let name = bus.name();
        let warm_up = plan.bus_load(WARM_UP_EVENTS);
        self.step(format!("{name} warm-up"), async {
            bus::run_courier(bus, &warm_up, true).await.map(|_| Vec::new())
        })
        .await;
        for &events in &plan.levels {
            let load = plan.bus_load(events);
            self.step(format!("{name} {events} events"), async {
                Ok(vec![bus::run_courier(bus, &load, true).await?])
            })
            .await;
        }
        let load = plan.bus_load(plan.compare_events);
        for round in 1..=plan.rounds as u64 {
            self.step(format!("{name} against the bare client, round {round}"), async {
                // Who goes first alternates, so neither side always meets a broker that has just
                // been busy.
                let bare_first = round % 2 == 0;
                let mut rows = Vec::new();
                if bare_first {
                    rows.extend(super::run_baseline(url, &load).await?);
                }
                let mut courier = bus::run_courier(bus, &load, false).await?;
                courier.mode = PUBLISH_ONLY.into();
                rows.insert(0, courier);
                if !bare_first {
                    rows.extend(super::run_baseline(url, &load).await?);
                }
                for row in &mut rows {
                    row.round = Some(round);
                }
                Ok(rows)
            })
            .await;
        }
    }

    /// Drain and the steady rates of one database and bus.
    async fn outbox_runs<B: Bus>(&mut self, plan: &Plan, bus: &B, server: &Server, db: &str) {
        let name = format!("{db}/{}", bus.name());
        self.step(format!("{name} drain"), async {
            Ok(vec![outbox::drain(bus, server, &plan.outbox).await?])
        })
        .await;
        for &rate in &plan.rates {
            let load = OutboxLoad { duration: plan.steady, ..plan.outbox.clone() };
            let load = OutboxLoad { events: (rate * plan.steady.as_secs_f64()).ceil() as usize, ..load };
            self.step(format!("{name} steady {rate:.0}/s"), async {
                Ok(vec![outbox::steady(bus, server, &load, rate).await?])
            })
            .await;
        }
    }
}

/// The JSON file: the rows of DESIGN.md §6, and what failed.
#[derive(Serialize)]
struct Json<'a> {
    rows: &'a [Row],
    failures: Vec<JsonFailure<'a>>,
}

#[derive(Serialize)]
struct JsonFailure<'a> {
    what: &'a str,
    error: &'a str,
}

impl BenchReportArgs {
    /// Runs the matrix, prints the report, writes the JSON and the charts; fails after writing
    /// them if a part of the matrix failed.
    pub async fn run(self) -> anyhow::Result<bool> {
        let plan = Plan::new(&self);
        let started = Instant::now();
        let load_before = load_average();
        let progress = ProgressBar::new(plan.steps()).with_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}")
                .expect("valid template"),
        );
        let mut runs = Runs { rows: Vec::new(), failures: Vec::new(), progress };
        for (backend, url) in &plan.backends {
            let connected: anyhow::Result<()> = async {
                with_bus!(url.clone(), |bus| {
                    runs.bus_levels(&plan, &bus, url).await;
                    Ok(())
                })
            }
            .await;
            if let Err(error) = connected {
                runs.fail(format!("{} bus", backend.name()), &error);
            }
        }
        for db in &plan.dbs {
            let shown = redact_url(db);
            let server = match Server::new((db != "sqlite").then_some(db.as_str())) {
                Ok(server) => server,
                Err(error) => {
                    runs.fail(format!("outbox on {shown}"), &error);
                    continue;
                }
            };
            let label = db.split(':').next().unwrap_or_default().to_owned();
            for (backend, url) in &plan.outbox_buses {
                let connected: anyhow::Result<()> = async {
                    with_bus!(url.clone(), |bus| {
                        runs.outbox_runs(&plan, &bus, &server, &label).await;
                        Ok(())
                    })
                }
                .await;
                if let Err(error) = connected {
                    runs.fail(format!("outbox {label}/{}", backend.name()), &error);
                }
            }
            let load = plan.outbox.clone();
            runs.step(format!("{label} bare-SQL baseline"), async {
                Ok(vec![outbox::baseline(&server, &load).await?])
            })
            .await;
        }
        runs.progress.finish_and_clear();

        let conditions = Conditions {
            plan: &plan,
            quick: self.quick,
            elapsed: started.elapsed(),
            load_before,
            load_after: load_average(),
        };
        println!("{}", conditions.markdown());
        println!("{}", table::render(&runs.rows, &runs.failures));
        if let Some(path) = &self.json {
            write_json(path, &runs.rows, &runs.failures)?;
        }
        if let Some(dir) = &self.out {
            write_charts(dir, &runs.rows, plan.payload)?;
        }
        anyhow::ensure!(
            runs.failures.is_empty(),
            "{} part(s) of the matrix failed; the report above names them",
            runs.failures.len()
        );
        Ok(runs.rows.iter().all(Row::is_clean))
    }
}

/// The conditions printed above the tables.
struct Conditions<'a> {
    plan: &'a Plan,
    quick: bool,
    elapsed: Duration,
    load_before: Option<String>,
    load_after: Option<String>,
}

impl Conditions<'_> {
    fn markdown(&self) -> String {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let levels: Vec<String> = self.plan.levels.iter().map(|l| table::thousands(*l as f64)).collect();
        let rates: Vec<String> = self.plan.rates.iter().map(|r| table::thousands(*r)).collect();
        format!(
            "# courier bench report{}\n\n\
             - payload {} B, in-flight window {}, aggregates = events/10, one warm-up run per bus\n\
             - bus levels: {} events; Courier against the bare clients at {} events, {} round(s)\n\
             - outbox: {}-event drains; open-loop steady runs at {} events/s for {:?}, {} events per transaction\n\
             - {cores} cores; load average {} at the start, {} at the end; {:.0} s in all\n",
            if self.quick { " (--quick)" } else { "" },
            self.plan.payload,
            self.plan.window,
            levels.join(", "),
            table::thousands(self.plan.compare_events as f64),
            self.plan.rounds,
            table::thousands(self.plan.outbox.events as f64),
            rates.join(" and "),
            self.plan.steady,
            self.plan.outbox.tx_events,
            self.load_before.as_deref().unwrap_or("unknown"),
            self.load_after.as_deref().unwrap_or("unknown"),
            self.elapsed.as_secs_f64(),
        )
    }
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn write_json(path: &Path, rows: &[Row], failures: &[Failure]) -> anyhow::Result<()> {
    let failures = failures.iter().map(|f| JsonFailure { what: &f.what, error: &f.error }).collect();
    let json = serde_json::to_string_pretty(&Json { rows, failures })?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// `bus-throughput.svg` and `bus-latency.svg` in `dir`, from the per-level rows.
fn write_charts(dir: &Path, rows: &[Row], payload: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (throughput, latency) = chart_series(rows);
    let charts = [
        (
            "bus-throughput.svg",
            chart::line_chart(
                &format!("Throughput from the first publish to the last ACK / handler ({payload} B)"),
                "events per run (pressure level)",
                "events/s",
                &throughput,
            ),
        ),
        (
            "bus-latency.svg",
            chart::line_chart(
                &format!("p99 latency: publish→ACK and publish→handler ({payload} B)"),
                "events per run (pressure level)",
                "ms",
                &latency,
            ),
        ),
    ];
    for (name, svg) in charts {
        let path = dir.join(name);
        std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Per backend, in the order the rows came: publishing and handling throughput by level, and ACK
/// and end-to-end p99 by level.
fn chart_series(rows: &[Row]) -> (Vec<Series>, Vec<Series>) {
    let mut backends: Vec<&str> = Vec::new();
    for row in rows.iter().filter(|r| r.mode == "courier" && !table::is_outbox(r)) {
        if !backends.contains(&row.backend.as_str()) {
            backends.push(&row.backend);
        }
    }
    let series = |backend: &str, name: String, dashed: bool, y: &dyn Fn(&Row) -> Option<f64>| Series {
        name,
        points: rows
            .iter()
            .filter(|r| r.backend == backend && r.mode == "courier")
            .filter_map(|r| Some((r.events as f64, y(r)?)))
            .collect(),
        dashed,
    };
    let throughput = backends
        .iter()
        .flat_map(|b| {
            [
                series(b, format!("{b} published"), false, &|r| Some(r.throughput_eps)),
                series(b, format!("{b} handled"), true, &|r| r.e2e_throughput_eps),
            ]
        })
        .collect();
    let latency = backends
        .iter()
        .flat_map(|b| {
            [
                series(b, format!("{b} ACK p99"), false, &|r| Some(r.ack_p99_ms)),
                series(b, format!("{b} e2e p99"), true, &|r| r.e2e_p99_ms),
            ]
        })
        .collect();
    (throughput, latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_have_a_line_per_backend_from_the_level_rows() {
        let row = |backend: &str, mode: &str, events: u64| Row {
            backend: backend.into(),
            mode: mode.into(),
            events,
            throughput_eps: events as f64,
            ack_p99_ms: 1.0,
            e2e_p99_ms: Some(2.0),
            e2e_throughput_eps: Some(events as f64 / 2.0),
            ..Row::default()
        };
        let rows = [
            row("nats", "courier", 500),
            row("nats", "courier", 2000),
            row("nats", "baseline", 5000),
            row("kafka", "courier", 500),
            row("postgres/nats", "drain", 100),
        ];
        let (throughput, latency) = chart_series(&rows);
        let names: Vec<&str> = throughput.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["nats published", "nats handled", "kafka published", "kafka handled"]);
        assert_eq!(throughput[0].points, [(500.0, 500.0), (2000.0, 2000.0)]);
        assert_eq!(throughput[1].points, [(500.0, 250.0), (2000.0, 1000.0)]);
        assert_eq!(latency.len(), 4);
        assert!(latency[1].dashed && latency[1].name == "nats e2e p99");
    }
}
