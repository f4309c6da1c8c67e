//! With the `otel` feature: spans reach an OTLP/HTTP collector, and an event enqueued inside a
//! span carries that span's trace id to the broker.
#![cfg(feature = "otel")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// An OTLP/HTTP collector on an ephemeral port that reports the request line of every request.
///
/// Each connection is served on its own thread and a malformed one is dropped: other tests pick
/// ports by binding and releasing them (a restarted nats-server, a relay's listener), so their
/// clients can reach this port and must not stop the exporter's request from being served.
fn collector() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || serve_connection(stream, &tx));
        }
    });
    (endpoint, rx)
}

/// Answers HTTP/1.1 requests on one connection until it closes or sends something else.
fn serve_connection(stream: TcpStream, requests: &mpsc::Sender<String>) -> Option<()> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).ok()? == 0 {
            return None;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).ok()?;
            if header.trim().is_empty() {
                break;
            }
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().ok()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").ok()?;
        requests.send(format!("{} ({} bytes)", request_line.trim(), body.len())).ok()?;
    }
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
    // A client of another test that reached this port and waits for the server to speak first
    // (as a NATS client does).
    let _stray = TcpStream::connect(endpoint.trim_start_matches("http://")).unwrap();
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
