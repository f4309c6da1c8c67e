//! With the `otel` feature: spans reach an OTLP/HTTP collector, and an event enqueued inside a
//! span carries that span's trace id to the broker.
#![cfg(feature = "otel")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// Accepts OTLP/HTTP requests and reports each request line.
fn collector() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
            let _ = tx.send(format!("{} ({} bytes)", request_line.trim(), body.len()));
        }
    });
    (endpoint, rx)
}

/// Runs `courier outbox enqueue` for one event into a fresh SQLite outbox in `dir`, exporting
/// spans to `endpoint`; returns the database URL and the process output.
fn enqueue_one(endpoint: &str, dir: &tempfile::TempDir) -> (String, std::process::Output) {
    let db = format!("sqlite://{}", dir.path().join("otel.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "outbox",
            "--db",
            &db,
            "enqueue",
            "--topic",
            "otel-t",
            "--aggregate-id",
            "a",
            "--event-type",
            "E",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (db, out)
}

#[test]
fn enqueue_spans_are_exported_over_otlp() {
    let (endpoint, requests) = collector();
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = enqueue_one(&endpoint, &dir);
    let request = requests.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
        panic!("no spans exported on exit; courier's stderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(request.starts_with("POST /v1/traces"), "{request}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enqueue_span_becomes_the_events_trace_context() {
    let (endpoint, _requests) = collector();
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = enqueue_one(&endpoint, &dir);
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let traceparent: Option<String> =
        sqlx::query_scalar("SELECT traceparent FROM courier_outbox").fetch_one(&pool).await.unwrap();
    let traceparent = traceparent.expect("the row carries the enqueue span's context");
    courier_core::TraceContext::new(traceparent, None).expect("a valid W3C traceparent");
}
