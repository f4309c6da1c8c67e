//! `courier bench report --quick` against the real local services (NATS, Kafka, PostgreSQL,
//! MariaDB, SQLite): every part of the matrix reports, with sane figures, and the charts are
//! SVG. Timings are printed by the report, never asserted.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

#[test]
fn the_quick_report_is_complete_and_sane() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("rows.json");
    let charts = dir.path().join("charts");
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["bench", "report", "--quick", "--json"])
        .arg(&json)
        .arg("--out")
        .arg(&charts)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "report failed ({:?}):\n{stdout}\n{stderr}", out.status);

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["failures"], Value::Array(Vec::new()), "{stdout}");
    let rows = report["rows"].as_array().unwrap();
    let present: BTreeSet<(String, String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["backend"].as_str().unwrap().into(),
                r["mode"].as_str().unwrap().into(),
                r["events"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut expected = BTreeSet::new();
    for backend in ["memory", "nats", "kafka"] {
        for events in [500, 2000] {
            expected.insert((backend.to_owned(), "courier".to_owned(), events));
        }
        expected.insert((backend.to_owned(), "courier-publish-only".to_owned(), 5000));
        expected.insert((backend.to_owned(), "baseline".to_owned(), 5000));
    }
    for backend in ["nats", "kafka"] {
        expected.insert((backend.to_owned(), "baseline-payload-only".to_owned(), 5000));
    }
    for db in ["postgres", "mysql", "sqlite"] {
        for bus in ["nats", "kafka", "memory"] {
            expected.insert((format!("{db}/{bus}"), "drain".into(), 2000));
            // 2 s at 1,000 and at 4,000 events/s.
            expected.insert((format!("{db}/{bus}"), "steady".into(), 2000));
            expected.insert((format!("{db}/{bus}"), "steady".into(), 8000));
        }
        expected.insert((db.to_owned(), "baseline".into(), 2000));
    }
    assert_eq!(present, expected, "rows differ from the quick matrix");
    assert_eq!(rows.len(), expected.len(), "a row appears twice");

    for row in rows {
        let what = format!("{} {} {}", row["backend"], row["mode"], row["events"]);
        for key in ["lost", "duplicates", "order_violations"] {
            assert_eq!(row[key], 0, "{what}: {key} in {row}");
        }
        for key in ["throughput_eps", "cpu_us_per_event"] {
            assert!(row[key].as_f64().unwrap() > 0.0, "{what}: {key} in {row}");
        }
        assert!(row["machine_cpu_us_per_event"].as_f64().unwrap() >= 0.0, "{what}: {row}");
        let mode = row["mode"].as_str().unwrap();
        if mode == "courier" {
            // Publish→ACK and publish→handler for every level, tasks counted around the run.
            for key in ["ack_p50_ms", "ack_p99_ms", "ack_max_ms", "e2e_p50_ms", "e2e_p99_ms", "accept_p50_us"]
            {
                assert!(row[key].as_f64().unwrap() > 0.0, "{what}: {key} in {row}");
            }
            assert!(row["ack_p50_ms"].as_f64() <= row["ack_max_ms"].as_f64(), "{what}: {row}");
            assert!(row["tasks_before"].is_u64() && row["tasks_after"].is_u64(), "{what}: {row}");
            assert!(row["peak_rss_bytes"].as_u64().unwrap() > 0, "{what}: {row}");
        }
        if mode == "steady" {
            assert!(row["e2e_p99_ms"].as_f64().unwrap() > 0.0, "{what}: {row}");
            assert!(row["offered_eps"].as_f64().unwrap() > 0.0, "{what}: {row}");
        }
    }

    for heading in ["## Bus: by pressure level", "Courier/bare", "## Outbox: database × bus", "## Failures"]
    {
        assert!(stdout.contains(heading), "no {heading:?} in:\n{stdout}");
    }
    for name in ["bus-throughput.svg", "bus-latency.svg"] {
        let svg = std::fs::read_to_string(charts.join(name)).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{name} is not XML: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let lines = doc.descendants().filter(|n| n.has_tag_name("polyline")).count();
        assert_eq!(lines, 6, "{name}: two lines per backend");
    }
}
