//! A Tansu broker of a test's own (memory storage, free port), for the Kafka security tests:
//! one that requires SASL authentication, or one behind a TLS listener.
//!
//! Tansu 0.6 offers SASL SCRAM (`--authentication`) but not PLAIN, and its own TLS listener does
//! not answer a TLS handshake; [`TlsProxy`] (socat) puts a real TLS listener in front of it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private Tansu process, killed on drop.
pub struct PrivateTansu {
    child: Child,
    /// Where it listens (127.0.0.1).
    pub port: u16,
}

impl PrivateTansu {
    /// Starts Tansu on a free port. `advertised_port` is the port it tells clients to use (a
    /// [`TlsProxy`] in front of it), by default its own; `authentication` makes it require SASL.
    pub fn start(authentication: bool, advertised_port: Option<u16>) -> Self {
        let port = crate::local::free_port();
        let advertised = advertised_port.unwrap_or(port);
        let mut command = Command::new(binary("tansu", "install it with `bash scripts/services.sh`"));
        command.args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine",
            "memory://tansu/",
        ]);
        if authentication {
            command.arg("--authentication");
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn tansu");
        let tansu = Self { child, port };
        wait_for(port, "tansu");
        tansu
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS listener (socat) that forwards each connection to a plain TCP port; killed on drop.
pub struct TlsProxy {
    child: Child,
    /// Where it listens (127.0.0.1).
    pub port: u16,
}

impl TlsProxy {
    /// Listens on `port` with the server certificate chain `cert` and its key `key` (PEM files),
    /// forwarding to 127.0.0.1:`target`.
    pub fn start(port: u16, cert: &Path, key: &Path, target: u16) -> Self {
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            cert.display(),
            key.display()
        );
        let child = Command::new(binary(
            "socat",
            "install it with `bash scripts/services.sh` (Debian package socat)",
        ))
        .args([listen, format!("TCP:127.0.0.1:{target}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn socat");
        let proxy = Self { child, port };
        wait_for(port, "socat");
        proxy
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        // The forked children serving connections end when their connections close.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name` from the PATH or from cargo's bin directory, or a panic that says how to install it.
fn binary(name: &str, install: &str) -> PathBuf {
    let cargo_bin = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin").join(name));
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .chain(cargo_bin)
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: {install}"))
}

/// Waits (generously, for a loaded machine) until something listens on `port`.
fn wait_for(port: u16, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not listen on 127.0.0.1:{port} within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}
