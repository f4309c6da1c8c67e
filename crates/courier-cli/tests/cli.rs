//! The `courier` binary as a real process.

use std::process::Command;

use courier_conformance::private_db::{PrivateDb, CERT_USER, PASSWORD_USER};

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
    let out = courier().args(["bench", "report", "--backends", "memory,redis"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'redis'"));
}

/// Runs `courier` with `args`; returns its exit status and stderr.
fn status_and_stderr(args: &[&str]) -> (Option<i32>, String) {
    let out = courier().args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn usage_errors_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("courier.toml");
    std::fs::write(&config, "[relay]\nbatch_sise = 10\n").unwrap();
    let db = format!("sqlite://{}", dir.path().join("o.db").display());
    let config = config.to_str().unwrap();
    for (args, expected) in [
        (vec!["demo", "--no-such-flag"], "--no-such-flag"),
        (vec!["demo", "--events", "0"], "--events"),
        (vec!["demo", "--timeout", "soon"], "--timeout"),
        (vec!["outbox", "--config", config, "stats"], "relay.batch_sise"),
        (vec!["outbox", "--db", &db, "requeue"], "requeue needs a filter"),
        (vec!["outbox", "--db", &db, "purge", "--inbox"], "--older-than"),
        (vec!["outbox", "--db", &db, "purge", "--inbox", "--dead"], "--dead"),
        (
            vec![
                "outbox",
                "--db",
                &db,
                "enqueue",
                "--aggregate-id",
                "a",
                "--event-type",
                "E",
                "--topic",
                "a b",
            ],
            "--topic",
        ),
    ] {
        let (status, stderr) = status_and_stderr(&args);
        assert_eq!(status, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?} should name {expected:?}: {stderr}");
    }
}

#[test]
fn runtime_errors_exit_3_and_print_each_cause_once() {
    // Nothing listens on port 1: the connection is refused at once.
    let (status, stderr) =
        status_and_stderr(&["outbox", "--db", "postgres://postgres@127.0.0.1:1/postgres", "stats"]);
    assert_eq!(status, Some(3), "{stderr}");
    assert!(
        stderr.starts_with("error: connecting to postgres://postgres@127.0.0.1:1/postgres: "),
        "{stderr}"
    );
    assert_eq!(stderr.matches("Connection refused").count(), 1, "the cause is repeated: {stderr}");

    let (status, stderr) = status_and_stderr(&["demo", "--events", "10", "--bus", "nats://127.0.0.1:1"]);
    assert_eq!(status, Some(3), "{stderr}");
    assert!(
        stderr.contains("error: connection error: connecting to NATS at nats://127.0.0.1:1: "),
        "{stderr}"
    );
    assert_eq!(stderr.matches("Connection refused").count(), 1, "the cause is repeated: {stderr}");
}

#[test]
fn a_run_that_loses_events_exits_1() {
    // The consumer stops after a millisecond, long before 5,000 events have reached it.
    let out = courier().args(["demo", "--events", "5000", "--timeout", "1ms"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("verdict:          FAILED"), "{stdout}");
}

/// `courier outbox purge --inbox` deletes the idempotent consumers' rows processed before
/// `--older-than` and keeps the younger ones.
#[tokio::test]
async fn outbox_purge_inbox_deletes_rows_older_than_the_given_age() {
    use courier_outbox::{Inbox, Recorded, Store};

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("inbox.db").display());
    let store = Store::connect(&db).await.unwrap();
    store.migrate().await.unwrap();
    let inbox = Inbox::new("billing").unwrap();
    let (old, young) = (courier_core::EventId::new(), courier_core::EventId::new());
    let mut tx = store.begin().await.unwrap();
    for id in [old, young] {
        assert_eq!(inbox.record(&mut tx, id).await.unwrap(), Recorded::New);
    }
    // Processed two days ago.
    tx.execute_raw(&format!(
        "UPDATE courier_inbox SET processed_at_us = processed_at_us - 172800000000 WHERE event_id = '{old}'"
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let out =
        courier().args(["outbox", "--db", &db, "purge", "--inbox", "--older-than", "1d"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 inbox row(s) older than 1day purged"), "{stdout}");
    let mut tx = store.begin().await.unwrap();
    assert_eq!(inbox.record(&mut tx, young).await.unwrap(), Recorded::AlreadyProcessed, "kept");
    assert_eq!(inbox.record(&mut tx, old).await.unwrap(), Recorded::New, "purged");
    tx.rollback().await.unwrap();
}

/// A database of its own on the shared PostgreSQL, dropped at the end.
struct SharedPgDb(String);

impl SharedPgDb {
    fn new() -> Self {
        let name = format!("courier_cli_{}", uuid::Uuid::now_v7().simple());
        psql(&format!("CREATE DATABASE {name}"));
        Self(name)
    }
}

impl Drop for SharedPgDb {
    fn drop(&mut self) {
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql])
        .output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "PostgreSQL must run on 127.0.0.1:5432 (scripts/services.sh starts it): {out:?}"
    );
}

/// Runs `courier` with `args`, expecting success; returns stdout.
fn succeeds(args: &[&str]) -> String {
    let out = courier().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn outbox_stats_over_tls_with_sslmode_require() {
    let db = SharedPgDb::new();
    let url = format!("postgres://postgres@127.0.0.1:5432/{}?sslmode=require", db.0);
    let stdout = succeeds(&["outbox", "--db", &url, "stats"]);
    assert!(stdout.contains("pending:            0"), "{stdout}");
}

#[test]
fn outbox_stats_with_verify_full_and_a_client_certificate() {
    let server = PrivateDb::postgres();
    let cert = server.client_cert();
    let query = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        server.ca_file().display(),
        cert.cert.display(),
        cert.key.display()
    );
    let stdout = succeeds(&["outbox", "--db", &server.url(CERT_USER, None, &query), "stats"]);
    assert!(stdout.contains("pending:            0"), "{stdout}");
}

/// Everything the binary prints when the database refuses its password, even with every log
/// enabled, names the failure once and never shows the password.
#[test]
fn a_wrong_database_password_is_named_once_and_never_printed() {
    let server = PrivateDb::postgres();
    let secret = "s3cr3t-Pa55-xyz";
    let query = format!("sslmode=verify-full&sslrootcert={}", server.ca_file().display());
    let url = server.url(PASSWORD_USER, Some(secret), &query);
    for args in [vec!["outbox", "--db", &url, "stats"], vec!["migrate", "--db", &url]] {
        let out = courier().args(&args).env("RUST_LOG", "trace").output().unwrap();
        let printed =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(3), "{args:?}: {printed}");
        assert!(!printed.contains(secret), "{args:?} printed the password:\n{printed}");
        let error = printed.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{printed}"));
        assert!(error.contains(&format!("{PASSWORD_USER}:***@127.0.0.1")), "{error}");
        assert!(error.contains("authentication failed: "), "{error}");
        assert_eq!(error.matches("password authentication failed for user").count(), 1, "{error}");
    }
}
