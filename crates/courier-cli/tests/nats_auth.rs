//! `courier relay` against a private nats-server that requires a password, the password coming
//! from a file named by COURIER_BUS__NATS__PASSWORD_FILE (a Kubernetes or Docker secret).

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use courier_conformance::nats_server::PrivateServer;

const RIGHT: &str = "r1ght-Pa55-zz";
/// Distinctive, so that finding it in the output cannot be a coincidence.
const WRONG: &str = "n4ts-Secr3t-qq";

fn password_protected() -> PrivateServer {
    PrivateServer::start(&format!("authorization {{ user: app, password: \"{RIGHT}\" }}"))
}

/// `courier relay` on a fresh SQLite outbox, logging everything, with the password in a file.
fn relay(server: &PrivateServer, dir: &std::path::Path, password: &str) -> (Command, String) {
    let file = dir.join("nats-password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let listen =
        format!("127.0.0.1:{}", TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
    command
        .args(["relay", "--db", &format!("sqlite://{}", dir.join("outbox.db").display())])
        .args(["--bus", &server.url(), "--listen", &listen])
        .env("COURIER_BUS__NATS__USER", "app")
        .env("COURIER_BUS__NATS__PASSWORD_FILE", &file)
        .env("COURIER_TOPICS__PROVISION", "[\"nats-auth\"]")
        .env("COURIER_LOG__LEVEL", "trace");
    (command, listen)
}

/// Waits (generously) until the relay answers `/readyz` with 200; fails if it exits first.
fn wait_ready(child: &mut Child, listen: &str) {
    let ready =
        || courier_conformance::local::http_get(listen, "/readyz").is_some_and(|(status, _)| status == 200);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(child.try_wait().unwrap().is_none(), "the relay exited");
        assert!(Instant::now() < deadline, "the relay did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (generously) for the relay to exit by itself and returns what it printed.
fn wait_exit(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the relay kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// A wrong password ends the relay at once with the runtime status and a message that says the
/// credential was refused; nothing it printed (trace logs included) holds the password.
#[test]
fn a_wrong_password_from_a_file_is_refused_and_never_printed() {
    let server = password_protected();
    let dir = tempfile::tempdir().unwrap();
    let (mut command, _) = relay(&server, dir.path(), WRONG);
    let out = wait_exit(command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{printed}");
    assert!(printed.contains("refused the credentials (authorization violation)"), "{printed}");
    assert!(!printed.contains(WRONG), "the password was printed:\n{printed}");
}

/// The same with the right password: the relay connects and reports ready, its trace logs again
/// free of the password.
#[test]
fn the_right_password_from_a_file_makes_the_relay_ready() {
    let server = password_protected();
    let dir = tempfile::tempdir().unwrap();
    let (mut command, listen) = relay(&server, dir.path(), RIGHT);
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_ready(&mut child, &listen);
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("connected to NATS"), "{printed}");
    assert!(!printed.contains(RIGHT), "the password was printed:\n{printed}");
}

/// Commands without a configuration file (bench, demo) take `[bus.nats]` from the environment;
/// the bench's bare-client baseline connects with them too.
#[test]
fn bench_takes_the_nats_credentials_from_the_environment() {
    let server = password_protected();
    let bench = |password: &str| {
        Command::new(env!("CARGO_BIN_EXE_courier"))
            .args([
                "bench",
                "bus",
                "--backend",
                "nats",
                "--bus",
                &server.url(),
                "--events",
                "200",
                "--baseline",
            ])
            .env("COURIER_BUS__NATS__USER", "app")
            .env("COURIER_BUS__NATS__PASSWORD", password)
            .output()
            .unwrap()
    };
    let out = bench(RIGHT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bench(WRONG);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{printed}");
    assert!(printed.contains("refused the credentials") && !printed.contains(WRONG), "{printed}");
}

/// TLS files from `[bus.nats]`: the relay reaches a server that verifies client certificates with
/// the CA and client certificate of the configuration file, and with a CA that did not sign the
/// server's certificate it exits at once saying the certificate is not trusted.
#[test]
fn the_relay_uses_the_tls_files_and_refuses_an_untrusted_server() {
    use courier_conformance::tls_certs::TestCa;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("courier-cli-test-ca");
    let ca_file = ca.write_cert(&dir.path().join("ca.crt"));
    let server_cert = ca.server(&["127.0.0.1"], dir.path(), "server");
    let client = ca.client("relay", dir.path(), "client");
    let server = PrivateServer::start(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, timeout: 5 }}",
        server_cert.cert, server_cert.key, ca_file
    ));
    let relay_with_ca = |ca: &std::path::Path| {
        let config = dir.path().join("courier.toml");
        std::fs::write(
            &config,
            format!(
                "[bus.nats]\ntls_ca_file = {ca:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
                client.cert, client.key
            ),
        )
        .unwrap();
        let listen =
            format!("127.0.0.1:{}", TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        let child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["relay", "--config"])
            .arg(&config)
            .args(["--db", &format!("sqlite://{}", dir.path().join("outbox.db").display())])
            .args(["--bus", &server.url(), "--listen", &listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, listen)
    };

    let (mut trusted, listen) = relay_with_ca(&ca_file);
    wait_ready(&mut trusted, &listen);
    trusted.kill().unwrap();
    trusted.wait().unwrap();

    let other_ca = TestCa::new("someone-else").write_cert(&dir.path().join("other-ca.crt"));
    let (untrusted, _) = relay_with_ca(&other_ca);
    let out = wait_exit(untrusted);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{printed}");
    assert!(printed.contains("the TLS certificate of NATS at nats://127.0.0.1"), "{printed}");
    assert!(printed.contains("is not trusted"), "{printed}");
}
