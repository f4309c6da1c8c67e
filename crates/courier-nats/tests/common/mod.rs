//! Helpers shared by the NATS integration tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier_core::{Envelope, Topic};
use courier_nats::{NatsBus, NatsConfig};

pub const SHARED_URL: &str = "nats://127.0.0.1:4222";
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A connected bus on the shared server, failing loudly when it is not there.
pub async fn shared_bus(config: impl FnOnce(NatsConfig) -> NatsConfig) -> NatsBus {
    NatsBus::connect(config(NatsConfig::new(SHARED_URL)))
        .await
        .expect("nats-server with JetStream on 127.0.0.1:4222 (start it with scripts/services.sh)")
}

pub fn event(aggregate: &str, payload: impl Into<bytes::Bytes>) -> Envelope {
    Envelope::builder("test", aggregate, "Tested").payload(payload).build().unwrap()
}

/// Messages currently stored in `topic`'s stream.
pub async fn stored_messages(bus: &NatsBus, topic: &Topic) -> u64 {
    let name = courier_nats::stream_name(topic);
    let mut stream = bus.jetstream().get_stream(&name).await.expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}

/// A nats-server of the test's own, on a free port with a private store directory, so the test can
/// kill and restart it without touching the shared server.
pub struct PrivateServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    config: PathBuf,
}

impl PrivateServer {
    /// Starts a server; `extra` is appended to its configuration file (e.g. `max_payload: 4096`).
    pub fn start(extra: &str) -> Self {
        assert!(
            std::path::Path::new(NATS_SERVER).exists(),
            "{NATS_SERVER} is missing: install nats-server (scripts/services.sh)"
        );
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("courier-nats-test-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("server.conf");
        let store = dir.join("store");
        std::fs::write(
            &config,
            format!("listen: 127.0.0.1:{port}\njetstream {{ store_dir: {store:?} }}\n{extra}\n"),
        )
        .unwrap();
        let mut server = Self { child: None, port, dir, config };
        server.start_again();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, after [`kill`](Self::kill)) on the same port and store directory.
    pub fn start_again(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private nats-server did not start; see {:?}", self.dir);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server hard (SIGKILL), like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
