//! PostgreSQL and MariaDB servers of a test's own, serving TLS with certificates made at test
//! time, for tests of TLS modes and authentication failures that the shared servers (trust
//! authentication, no private CA) cannot show.
//!
//! Each server listens on 127.0.0.1 and a free port, keeps its data in a fresh temporary
//! directory and has the same accounts: [`PASSWORD_USER`] (password [`PASSWORD`], over TLS only)
//! and [`CERT_USER`] (authenticated by a client certificate), each owning a database of its own
//! name. The server stops and its directory is removed when the value is dropped.

mod mariadb;
mod postgres;

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::tls_certs::{CertFiles, TestCa};

/// The account that signs in with [`PASSWORD`].
pub const PASSWORD_USER: &str = "courier_pw";
/// [`PASSWORD_USER`]'s password.
pub const PASSWORD: &str = "courier-Pw-0k";
/// The account that signs in with a client certificate (common name = user name).
pub const CERT_USER: &str = "courier_cert";

/// How long a server may take to accept connections: generous, for a loaded 2-core machine.
const READY_WITHIN: Duration = Duration::from_secs(180);

/// A private database server, killed and its directory removed on drop.
pub struct PrivateDb {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    scheme: &'static str,
    ca: PathBuf,
    client: CertFiles,
    /// The signal that stops the server at once (`kill -<signal>`).
    stop_signal: &'static str,
}

impl PrivateDb {
    /// A PostgreSQL server (the newest in /usr/lib/postgresql) requiring TLS on TCP:
    /// [`CERT_USER`] by `cert` authentication, everyone else by `scram-sha-256`.
    pub fn postgres() -> Self {
        postgres::start()
    }

    /// A MariaDB server (/usr/sbin/mariadbd) with TLS; [`PASSWORD_USER`] is created
    /// `REQUIRE SSL`, [`CERT_USER`] `REQUIRE X509` without a password.
    pub fn mariadb() -> Self {
        mariadb::start()
    }

    /// The URL of `user`'s database, e.g. `postgres://user:password@127.0.0.1:port/user?query`.
    pub fn url(&self, user: &str, password: Option<&str>, query: &str) -> String {
        let password = password.map(|p| format!(":{p}")).unwrap_or_default();
        let query = if query.is_empty() { String::new() } else { format!("?{query}") };
        format!("{}://{user}{password}@127.0.0.1:{}/{user}{query}", self.scheme, self.port)
    }

    /// The CA certificate that signed the server's and the client's certificates.
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// [`CERT_USER`]'s client certificate and key.
    pub fn client_cert(&self) -> &CertFiles {
        &self.client
    }

    /// The server's temporary directory, removed on drop; tests may put files of their own there.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh directory holding a CA certificate, a server certificate for 127.0.0.1 and
    /// localhost and a client certificate for [`CERT_USER`]; returns the server's files too.
    fn prepare(kind: &str, scheme: &'static str, stop_signal: &'static str) -> (Self, CertFiles) {
        let dir = std::env::temp_dir().join(format!("courier-{kind}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let ca = TestCa::new(&format!("Courier test CA ({kind})"));
        let ca_file = ca.write_cert(&dir.join("ca.crt"));
        let server = ca.server(&["127.0.0.1", "localhost"], &dir, "server");
        let client = ca.client(CERT_USER, &dir, "client");
        let port = crate::local::free_port();
        (Self { child: None, dir, port, scheme, ca: ca_file, client, stop_signal }, server)
    }

    /// Starts the server with its output in `server.log`, then waits until `probe` succeeds
    /// (a connection), failing with the log if the server exits or does not come up.
    fn spawn(&mut self, command: &mut Command, what: &str, mut probe: impl FnMut() -> bool) {
        let log_path = self.dir.join("server.log");
        let log = File::create(&log_path).expect("create server.log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone server.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({command:?}): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        while !probe() {
            let child = self.child.as_mut().expect("the server runs");
            if let Some(status) = child.try_wait().expect("poll the server") {
                panic!("{what} exited with {status}:\n{}", log());
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not accept connections within {READY_WITHIN:?}:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg(format!("-{}", self.stop_signal))
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether this process runs as root (database servers refuse to, or must be told).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Runs `command` to completion, failing with its output when it fails.
fn run(command: &mut Command, what: &str) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Fails with a hint to `scripts/services.sh` when `program` is not installed.
fn require(program: &Path) {
    assert!(program.exists(), "{} is missing: install it with scripts/services.sh", program.display());
}
