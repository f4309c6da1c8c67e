//! A nats-server of a test's own, for tests that must stop, freeze or restart the server
//! without touching the shared one (the NATS backend's restart tests, the outbox relay's
//! fencing tests).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A nats-server of the test's own, on a free port with a private store directory, so the test can
/// kill and restart it without touching the shared server.
pub struct PrivateServer {
    child: Option<Child>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: PathBuf,
    config: PathBuf,
}

impl PrivateServer {
    /// Starts a server; `extra` is appended to its configuration file (e.g. `max_payload: 4096`,
    /// an `authorization` or `tls` block). A server that exits at once (a bad `extra`) fails the
    /// test with its log.
    pub fn start(extra: &str) -> Self {
        assert!(
            std::path::Path::new(NATS_SERVER).exists(),
            "{NATS_SERVER} is missing: install nats-server (scripts/services.sh)"
        );
        let port = crate::local::free_port();
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

    /// Its `nats://` URL.
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
            let exited = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                panic!("private nats-server did not start ({exited:?}); its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server's process (SIGSTOP) without closing its connections, like a server
    /// that hangs: clients' writes pile up in socket buffers and are read once it is
    /// [`thaw`](Self::thaw)ed.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Resumes a [`freeze`](Self::freeze)d server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("the server runs");
        let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} of nats-server failed");
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
        if self.child.is_some() {
            self.thaw();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
