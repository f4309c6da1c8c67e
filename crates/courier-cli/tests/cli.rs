//! The `courier` binary as a real process.

use std::process::Command;

fn courier() -> Command {
    Command::new(env!("CARGO_BIN_EXE_courier"))
}

#[test]
fn demo_on_the_embedded_default_succeeds_and_reports() {
    let out = courier().args(["demo", "--events", "3000", "--aggregates", "50"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for line in ["order violations: 0", "lost:             0", "verdict:          OK"] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn bench_bus_memory_writes_the_documented_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("rows.json");
    let out = courier()
        .args(["bench", "bus", "--backend", "memory", "--events", "20000", "--payload", "256", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let row = &rows["rows"][0];
    for key in [
        "backend",
        "mode",
        "events",
        "payload_bytes",
        "throughput_eps",
        "ack_p50_ms",
        "ack_p99_ms",
        "lost",
        "duplicates",
        "order_violations",
        "accept_p50_us",
        "tasks_leaked",
        "peak_rss_bytes",
    ] {
        assert!(!row[key].is_null(), "row lacks {key}: {row}");
    }
    assert_eq!(row["backend"], "memory");
    assert_eq!(row["events"], 20000);
    assert_eq!(row["lost"], 0);
    assert_eq!(row["tasks_leaked"], 0);
    assert!(row["throughput_eps"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_outbox_on_the_embedded_default_writes_three_clean_rows() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("rows.json");
    let out = courier().args(["bench", "outbox", "--events", "2000", "--json"]).arg(&json).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = rows["rows"].as_array().unwrap();
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["drain", "steady", "baseline"]);
    for row in rows {
        assert_eq!(row["lost"], 0, "{row}");
        assert_eq!(row["duplicates"], 0, "{row}");
        assert_eq!(row["order_violations"], 0, "{row}");
        assert_eq!(row["payload_bytes"], 1024, "{row}");
        assert!(row["throughput_eps"].as_f64().unwrap() > 0.0, "{row}");
    }
    assert_eq!(rows[0]["backend"], "sqlite/memory");
    assert_eq!(rows[0]["events"], 2000);
    assert_eq!(rows[2]["events"], 2000);
    assert!(!rows[1]["e2e_p50_ms"].is_null() && !rows[1]["e2e_p99_ms"].is_null(), "{}", rows[1]);
}

#[test]
fn bad_arguments_are_named() {
    let out = courier().args(["demo", "--bus", "redis://x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported bus URL \"redis://x\""));
    let out = courier()
        .args(["bench", "bus", "--backend", "memory", "--baseline", "--events", "10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("memory bus has none"));
}
