//! The Markdown of `courier bench report`: the bus table by pressure level, Courier against the
//! bare clients, the outbox table, and the failures, from the rows alone.

use std::fmt::Write as _;

use crate::report::Row;

/// A part of the matrix that did not finish, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    pub what: String,
    pub error: String,
}

/// Courier against one bare client on one backend: the throughput ratio of each round, where a
/// round is one Courier run and one bare run back to back.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    pub backend: String,
    pub bare_mode: String,
    /// Courier/bare of each round, in round order.
    pub each: Vec<f64>,
    pub courier_eps: Vec<f64>,
    pub bare_eps: Vec<f64>,
}

impl Ratio {
    /// The median of the rounds' ratios: a shared machine's throughput drifts from run to run, a
    /// ratio measured back to back much less.
    pub fn median(&self) -> f64 {
        median_of(&self.each)
    }
}

/// The median of `values` (NaN for none).
pub fn median_of(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    crate::report::median(&sorted)
}

/// `a / b`, or NaN when `b` is not positive, so a missing figure never looks like a result.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// The mode of the Courier rows measured publish-only, next to the bare clients.
pub const PUBLISH_ONLY: &str = "courier-publish-only";

/// For each backend and bare mode (`baseline`, `baseline-payload-only`), the publish-only Courier
/// row against the bare row of the same round.
pub fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let mut out: Vec<Ratio> = Vec::new();
    for courier in rows.iter().filter(|row| row.mode == PUBLISH_ONLY) {
        let bare = rows.iter().filter(|bare| {
            bare.backend == courier.backend
                && bare.mode.starts_with("baseline")
                && bare.round == courier.round
        });
        for bare in bare {
            let at = out.iter().position(|r| r.backend == courier.backend && r.bare_mode == bare.mode);
            let at = at.unwrap_or_else(|| {
                out.push(Ratio {
                    backend: courier.backend.clone(),
                    bare_mode: bare.mode.clone(),
                    each: Vec::new(),
                    courier_eps: Vec::new(),
                    bare_eps: Vec::new(),
                });
                out.len() - 1
            });
            out[at].each.push(ratio(courier.throughput_eps, bare.throughput_eps));
            out[at].courier_eps.push(courier.throughput_eps);
            out[at].bare_eps.push(bare.throughput_eps);
        }
    }
    out
}

/// Whether a row comes from the outbox matrix (its backend names a database and a bus).
pub fn is_outbox(row: &Row) -> bool {
    row.backend.contains('/') || matches!(row.backend.as_str(), "postgres" | "mysql" | "sqlite")
}

/// The whole report.
pub fn render(rows: &[Row], failures: &[Failure]) -> String {
    let mut out = String::new();
    let bus: Vec<&Row> = rows.iter().filter(|r| !is_outbox(r) && r.mode == "courier").collect();
    if !bus.is_empty() {
        out.push_str("## Bus: by pressure level (Courier publisher and a consumer group)\n\n");
        out.push_str(&bus_table(&bus));
    }
    let compared: Vec<&Row> = rows.iter().filter(|r| !is_outbox(r) && r.mode != "courier").collect();
    if !compared.is_empty() {
        out.push_str("\n## Bus: Courier against the bare clients (publish only, same run)\n\n");
        out.push_str(&bus_table(&compared));
        out.push('\n');
        out.push_str(
            "| backend | bare client | rounds | Courier ev/s (median) | bare ev/s (median) \
             | Courier/bare (median) | each round |\n|---|---|---:|---:|---:|---:|---|\n",
        );
        for r in ratios(rows) {
            let each: Vec<String> = r.each.iter().map(|v| format!("{v:.2}")).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.2} | {} |",
                r.backend,
                r.bare_mode,
                r.each.len(),
                thousands(median_of(&r.courier_eps)),
                thousands(median_of(&r.bare_eps)),
                r.median(),
                each.join(", ")
            );
        }
    }
    let outbox: Vec<&Row> = rows.iter().filter(|r| is_outbox(r)).collect();
    if !outbox.is_empty() {
        out.push_str("\n## Outbox: database × bus\n\n");
        out.push_str(&outbox_table(&outbox));
    }
    out.push_str("\n## Failures\n\n");
    if failures.is_empty() {
        out.push_str("None: every part of the matrix ran.\n");
    }
    for failure in failures {
        let _ = writeln!(out, "- **{}**: {}", failure.what, failure.error.replace('\n', " "));
    }
    out
}

fn bus_table(rows: &[&Row]) -> String {
    let mut out = String::from(
        "| backend | mode | events | ev/s | accept p50/p99 µs | ACK p50/p99/max ms | handled ev/s \
         | e2e p50/p99 ms | lost/dup/order | tasks before→after | peak RSS MiB | CPU µs/ev process \
         | CPU µs/ev machine |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.2}/{:.2}/{} | {} | {} | {}/{}/{} | {} | {} | {} | {} |",
            r.backend,
            r.mode,
            thousands(r.events as f64),
            thousands(r.throughput_eps),
            pair(r.accept_p50_us, r.accept_p99_us, 0),
            r.ack_p50_ms,
            r.ack_p99_ms,
            optional(r.ack_max_ms, 2),
            r.e2e_throughput_eps.map_or("–".into(), thousands),
            pair(r.e2e_p50_ms, r.e2e_p99_ms, 2),
            r.lost,
            r.duplicates,
            r.order_violations,
            r.tasks_before.zip(r.tasks_after).map_or("–".into(), |(b, a)| format!("{b}→{a}")),
            optional(r.peak_rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0)), 0),
            optional(r.cpu_us_per_event, 1),
            optional(r.machine_cpu_us_per_event, 1),
        );
    }
    out
}

fn outbox_table(rows: &[&Row]) -> String {
    let mut out = String::from(
        "| database/bus | mode | events | offered ev/s | ev/s | enqueue→ACK p50/p99 ms \
         | intended→ACK p50/p99 ms | lost/dup/order | CPU µs/ev process | CPU µs/ev machine |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let measured_acks = r.mode != "baseline";
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {}/{}/{} | {} | {} |",
            r.backend,
            r.mode,
            thousands(r.events as f64),
            r.offered_eps.map_or("–".into(), thousands),
            thousands(r.throughput_eps),
            if measured_acks { format!("{:.2}/{:.2}", r.ack_p50_ms, r.ack_p99_ms) } else { "–".into() },
            pair(r.e2e_p50_ms, r.e2e_p99_ms, 2),
            r.lost,
            r.duplicates,
            r.order_violations,
            optional(r.cpu_us_per_event, 1),
            optional(r.machine_cpu_us_per_event, 1),
        );
    }
    out
}

/// `12345.6` as `12,346`.
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", value.abs());
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value < -0.5 {
        grouped.insert(0, '-');
    }
    grouped
}

fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

fn pair(a: Option<f64>, b: Option<f64>, decimals: usize) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{a:.decimals$}/{b:.decimals$}"),
        _ => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(backend: &str, mode: &str, eps: f64) -> Row {
        Row {
            backend: backend.into(),
            mode: mode.into(),
            events: 1000,
            throughput_eps: eps,
            ..Row::default()
        }
    }

    #[test]
    fn ratios_pair_courier_with_each_bare_row_of_its_backend_and_round() {
        let in_round = |mut row: Row, round| {
            row.round = Some(round);
            row
        };
        let rows = [
            in_round(row("nats", PUBLISH_ONLY, 90.0), 1),
            in_round(row("nats", "baseline", 100.0), 1),
            in_round(row("nats", "baseline", 50.0), 2),
            in_round(row("nats", PUBLISH_ONLY, 60.0), 2),
            in_round(row("nats", PUBLISH_ONLY, 10.0), 3),
            in_round(row("nats", "baseline", 100.0), 3),
            row("kafka", PUBLISH_ONLY, 50.0),
            row("kafka", "baseline", 40.0),
            row("kafka", "baseline-payload-only", 100.0),
            row("kafka", "courier", 1.0),
        ];
        let found = ratios(&rows);
        let summary: Vec<(&str, &str, Vec<f64>, f64)> = found
            .iter()
            .map(|r| (r.backend.as_str(), r.bare_mode.as_str(), r.each.clone(), r.median()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("nats", "baseline", vec![0.9, 1.2, 0.1], 0.9),
                ("kafka", "baseline", vec![1.25], 1.25),
                ("kafka", "baseline-payload-only", vec![0.5], 0.5),
            ]
        );
        assert_eq!(found[0].courier_eps, [90.0, 60.0, 10.0]);
    }

    #[test]
    fn medians_of_even_and_empty_lists() {
        assert_eq!(median_of(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median_of(&[]).is_nan());
    }

    #[test]
    fn a_ratio_against_nothing_is_not_a_number() {
        assert!(ratio(1.0, 0.0).is_nan());
        assert_eq!(ratio(3.0, 2.0), 1.5);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(-2500.0), "-2,500");
        assert_eq!(thousands(f64::NAN), "–");
    }

    #[test]
    fn the_report_has_a_line_per_row_and_names_failures() {
        let mut courier = row("nats", "courier", 12345.0);
        courier.e2e_p50_ms = Some(1.5);
        courier.e2e_p99_ms = Some(4.25);
        let rows = [
            courier,
            row("nats", PUBLISH_ONLY, 90.0),
            row("nats", "baseline", 100.0),
            row("postgres/nats", "drain", 30000.0),
            row("postgres", "baseline", 90000.0),
        ];
        let failures = [Failure { what: "kafka".into(), error: "connection refused\nat 9092".into() }];
        let text = render(&rows, &failures);
        assert!(text.contains("| nats | courier | 1,000 | 12,345 |"), "{text}");
        assert!(text.contains("1.50/4.25"), "{text}");
        assert!(text.contains("| nats | baseline | 1 | 90 | 100 | 0.90 | 0.90 |"), "{text}");
        assert!(text.contains("| postgres/nats | drain |"), "{text}");
        assert!(text.contains("| postgres | baseline |"), "{text}");
        assert!(text.contains("- **kafka**: connection refused at 9092"), "{text}");
        // Every table row has as many cells as its header.
        for table in text.split("\n\n").filter(|t| t.starts_with('|')) {
            let cells: Vec<usize> = table.lines().map(|l| l.matches('|').count()).collect();
            assert!(cells.iter().all(|&c| c == cells[0]), "{table}");
        }
    }

    #[test]
    fn a_clean_run_says_so() {
        assert!(render(&[], &[]).contains("None: every part of the matrix ran."));
    }
}
