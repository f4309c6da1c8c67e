//! `courier relay` against a Kafka broker that refuses its SASL credentials: a private Tansu that
//! requires SCRAM authentication, with the password read from a `sasl.password_file` key. The
//! relay must say that authentication failed, and nothing it prints or serves may contain the
//! password.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use courier_conformance::tansu_server::{free_port, PrivateTansu};

/// Status code and body of `path` on `listen`, or `None` when nothing answers.
fn get(listen: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(listen).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

#[test]
fn a_refused_sasl_password_from_a_file_is_reported_as_an_authentication_failure_and_never_printed() {
    let broker = PrivateTansu::start(true, None);
    let dir = tempfile::tempdir().unwrap();
    let password = format!("kafka-pw-{}", uuid::Uuid::now_v7().simple());
    let password_file = dir.path().join("kafka-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("courier.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{db}\"\n\
             [bus]\nurl = \"kafka://127.0.0.1:{port}\"\n\
             [bus.kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
             \"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"courier\"\n\
             \"sasl.password_file\" = {file:?}\n\"debug\" = \"security,broker,conf\"\n\
             [http]\nlisten = \"{listen}\"\n[log]\nlevel = \"debug\"\n",
            db = dir.path().join("outbox.db").display(),
            port = broker.port,
            file = password_file.to_str().unwrap(),
        ),
    )
    .unwrap();
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut relay = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["relay", "--config", config.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let readiness = loop {
        match get(&listen, "/readyz") {
            Some((503, body)) if body.contains("authentication failed") => break body,
            _ if Instant::now() > deadline => {
                let _ = relay.kill();
                panic!(
                    "/readyz never said authentication failed; stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap()
                );
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let (_, metrics) = get(&listen, "/metrics").expect("/metrics answers");
    assert!(Command::new("kill").args(["-TERM", &relay.id().to_string()]).status().unwrap().success());
    let status = relay.wait().unwrap();
    assert!(status.success(), "the relay exits cleanly on SIGTERM: {status}");

    let printed = std::fs::read_to_string(&stdout).unwrap() + &std::fs::read_to_string(&stderr).unwrap();
    assert!(printed.contains("SCRAM authentication failed"), "librdkafka's report is logged:\n{printed}");
    for (what, text) in [("printed output", &printed), ("/readyz", &readiness), ("/metrics", &metrics)] {
        assert!(!text.contains(&password), "the password appears in {what}:\n{text}");
    }
}
