//! `courier relay` as a real process against PostgreSQL and NATS: metrics, readiness, config
//! errors and graceful shutdown. Each test gets its own database; the broker-outage test runs
//! its own nats-server so the shared one is never disturbed.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use courier_conformance::local::{free_port, http_get};

use courier_conformance::private_db::{PrivateDb, PASSWORD_USER};

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const SHARED_NATS: &str = "nats://127.0.0.1:4222";

fn courier() -> Command {
    Command::new(env!("CARGO_BIN_EXE_courier"))
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A PostgreSQL database of its own, dropped at the end.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn new() -> Self {
        let name = unique("courier_relay");
        let admin = sqlx::PgPool::connect(&format!("{PG}/postgres"))
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (scripts/services.sh starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
        Self { url: format!("{PG}/{name}"), name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-qc"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .output();
    }
}

/// A nats-server of this test's own, restartable on the same port and store.
struct PrivateNats {
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    fn start() -> Self {
        let mut nats = Self::stopped();
        nats.up();
        nats
    }

    /// A server with its port and store chosen, not running until `up`.
    fn stopped() -> Self {
        Self { port: free_port(), store: tempfile::tempdir().unwrap(), child: None }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed at /usr/sbin/nats-server");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), "private nats-server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.down();
    }
}

/// A running `courier relay` process, stopped with SIGTERM.
struct RelayProcess {
    child: Child,
    listen: String,
}

impl RelayProcess {
    fn start(db: &str, bus: &str, topic: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::spawn(db, bus, topic, extra_env, Stdio::null(), Stdio::piped())
    }

    /// Like [`start`](Self::start), with the relay's stdout and stderr going to `stdout` and
    /// `stderr` (files, when it may print more than a pipe holds before it is read).
    fn spawn(
        db: &str,
        bus: &str,
        topic: &str,
        extra_env: &[(&str, &str)],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut command = courier();
        command
            .args(["relay", "--db", db, "--bus", bus, "--listen", &listen])
            .env("COURIER_TOPICS__PROVISION", format!("[\"{topic}\"]"))
            .env("COURIER_RELAY__BACKOFF_MAX", "1s")
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let relay = Self { child: command.spawn().unwrap(), listen };
        wait_until(Duration::from_secs(30), "relay serving /healthz", || relay.get("/healthz").is_some());
        relay
    }

    /// Status code and body of `path`, or `None` when nothing answers.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.listen, path)
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").expect("/metrics answers");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing in:\n{body}"))
    }

    /// Sends SIGTERM and returns the exit status and stderr.
    fn terminate(mut self) -> Output {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "relay did not exit within 60s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        let child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        child.wait_with_output().unwrap()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn enqueue(db: &str, topic: &str, count: usize) {
    run_ok(
        courier().args(["outbox", "--db", db, "enqueue", "--topic", topic, "--aggregate-id", "acct"]).args([
            "--event-type",
            "Deposited",
            "--count",
            &count.to_string(),
        ]),
    );
}

/// (pending, published, dead) as `courier outbox stats` prints them.
fn stats(db: &str) -> (u64, u64, u64) {
    let out = run_ok(courier().args(["outbox", "--db", db, "stats"]));
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    (field("pending:"), field("published:"), field("dead:"))
}

/// Messages stored in the topic's stream (JetStream de-duplicates re-publishes by event id).
async fn stream_messages(nats: &str, topic: &str) -> u64 {
    let client = async_nats::connect(nats).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let topic = courier_core::Topic::new(topic).unwrap();
    let mut stream = js.get_stream(courier_nats::stream_name(&topic)).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_events_are_relayed() {
    let db = TestDb::new().await;
    let topic = unique("relay-metrics").replace('_', "-");
    enqueue(&db.url, &topic, 200);
    let relay = RelayProcess::start(&db.url, SHARED_NATS, &topic, &[]);
    wait_until(Duration::from_secs(30), "200 published", || {
        relay.metric("courier_outbox_published_total") == 200.0
    });
    enqueue(&db.url, &topic, 100);
    wait_until(Duration::from_secs(30), "300 published", || {
        relay.metric("courier_outbox_published_total") == 300.0
    });
    wait_until(Duration::from_secs(10), "pending gauge at 0", || {
        relay.metric("courier_outbox_pending") == 0.0
    });
    assert_eq!(relay.metric("courier_commit_to_ack_seconds_count"), 300.0);
    assert_eq!(relay.metric("courier_publish_outcomes_total{backend=\"nats\",outcome=\"ok\"}"), 300.0);
    assert_eq!(relay.get("/readyz").unwrap().0, 200);
    let out = relay.terminate();
    assert!(out.status.success(), "exit after SIGTERM: {:?}", out.status);
    assert_eq!(stats(&db.url), (0, 300, 0));
    assert_eq!(stream_messages(SHARED_NATS, &topic).await, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker_and_nothing_is_lost_while_it_is_down() {
    let db = TestDb::new().await;
    let mut nats = PrivateNats::start();
    let topic = unique("relay-outage").replace('_', "-");
    let relay = RelayProcess::start(&db.url, &nats.url(), &topic, &[]);
    wait_until(Duration::from_secs(10), "ready", || relay.get("/readyz").is_some_and(|(s, _)| s == 200));

    nats.down();
    wait_until(Duration::from_secs(15), "not ready", || relay.get("/readyz").is_some_and(|(s, _)| s == 503));
    let (_, body) = relay.get("/readyz").unwrap();
    assert!(body.contains("nats broker"), "{body}");
    enqueue(&db.url, &topic, 50);
    std::thread::sleep(Duration::from_secs(2));
    let (pending, published, dead) = stats(&db.url);
    assert_eq!((pending, published, dead), (50, 0, 0), "events stay pending while the broker is down");

    nats.up();
    wait_until(Duration::from_secs(30), "ready again", || {
        relay.get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    wait_until(Duration::from_secs(60), "all relayed", || stats(&db.url).1 == 50);
    assert!(relay.terminate().status.success());
    assert_eq!(stats(&db.url), (0, 50, 0));
    assert_eq!(stream_messages(&nats.url(), &topic).await, 50);
}

/// Under an orchestrator the relay may start before its dependencies: it stays alive, says on
/// `/readyz` which one it waits for (never showing a password), and starts once they answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_waits_for_an_unreachable_database_and_broker_naming_them() {
    // Nothing listens on port 1; the password must not show anywhere.
    let secret_db = "postgres://courier:pw-that-must-not-show@127.0.0.1:1/courier";
    let relay = RelayProcess::start(secret_db, SHARED_NATS, "never-used", &[]);
    wait_until(Duration::from_secs(30), "/readyz naming the database", || {
        relay.get("/readyz").is_some_and(|(s, body)| s == 503 && body.contains("waiting for database"))
    });
    let (_, body) = relay.get("/readyz").unwrap();
    assert!(body.contains("postgres://courier:***@127.0.0.1:1/courier"), "{body}");
    assert_eq!(relay.get("/healthz").map(|(s, _)| s), Some(200));
    let out = relay.terminate();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SIGTERM while waiting ends the relay cleanly: {stderr}");
    assert!(!stderr.contains("pw-that-must-not-show") && !body.contains("pw-that-must-not-show"), "{stderr}");

    let db = TestDb::new().await;
    let mut nats = PrivateNats::stopped();
    let topic = unique("relay-late-broker").replace('_', "-");
    enqueue(&db.url, &topic, 20);
    let relay = RelayProcess::start(&db.url, &nats.url(), &topic, &[]);
    wait_until(Duration::from_secs(30), "/readyz naming the broker", || {
        relay.get("/readyz").is_some_and(|(s, body)| s == 503 && body.contains("waiting for NATS at"))
    });
    nats.up();
    wait_until(Duration::from_secs(60), "ready once the broker is up", || {
        relay.get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    wait_until(Duration::from_secs(60), "all relayed", || stats(&db.url).1 == 20);
    assert!(relay.terminate().status.success());
    assert_eq!(stream_messages(&nats.url(), &topic).await, 20);
}

/// A relay whose database refuses its password keeps retrying and says why on `/readyz`; the
/// password shows nowhere: not in its log with every level enabled, `/readyz`, `/metrics`, or
/// what it prints on the way out.
#[test]
fn a_wrong_database_password_is_named_and_never_shown() {
    let server = PrivateDb::postgres();
    let secret = "s3cr3t-Pa55-xyz";
    let query = format!("sslmode=verify-full&sslrootcert={}", server.ca_file().display());
    let url = server.url(PASSWORD_USER, Some(secret), &query);
    let logs = tempfile::tempdir().unwrap();
    let file = |name: &str| std::fs::File::create(logs.path().join(name)).unwrap().into();
    let env = [("RUST_LOG", "trace")];
    let relay = RelayProcess::spawn(&url, "memory", "never-used", &env, file("stdout"), file("stderr"));
    wait_until(Duration::from_secs(60), "/readyz naming the refused password", || {
        relay.get("/readyz").is_some_and(|(s, body)| s == 503 && body.contains("authentication failed"))
    });
    let (_, readyz) = relay.get("/readyz").unwrap();
    assert!(readyz.contains(&format!("{PASSWORD_USER}:***@127.0.0.1")), "{readyz}");
    let (_, metrics) = relay.get("/metrics").unwrap();
    assert!(relay.terminate().status.success());
    let read = |name: &str| std::fs::read_to_string(logs.path().join(name)).unwrap();
    let printed =
        [("/readyz", readyz), ("/metrics", metrics), ("stdout", read("stdout")), ("stderr", read("stderr"))];
    for (what, text) in printed {
        assert!(!text.contains(secret), "the password shows in {what}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_loses_nothing() {
    let db = TestDb::new().await;
    let topic = unique("relay-sigterm").replace('_', "-");
    enqueue(&db.url, &topic, 3000);
    // Small batches so the relay is surely mid-stream when the signal arrives.
    let slow = [("COURIER_RELAY__BATCH_SIZE", "20"), ("COURIER_RELAY__MAX_IN_FLIGHT", "8")];
    let relay = RelayProcess::start(&db.url, SHARED_NATS, &topic, &slow);
    wait_until(Duration::from_secs(30), "first events published", || {
        relay.metric("courier_outbox_published_total") > 0.0
    });
    let out = relay.terminate();
    assert!(
        out.status.success(),
        "exit code after SIGTERM: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (pending, published, dead) = stats(&db.url);
    assert_eq!(pending + published, 3000, "rows lost");
    assert_eq!(dead, 0);
    assert!(pending > 0, "the relay finished before the signal; the test proves nothing");

    let relay = RelayProcess::start(&db.url, SHARED_NATS, &topic, &[]);
    wait_until(Duration::from_secs(60), "the restart relays the rest", || stats(&db.url).1 == 3000);
    assert!(relay.terminate().status.success());
    assert_eq!(stream_messages(SHARED_NATS, &topic).await, 3000, "every event once in the stream");
}

/// The relay must be told where to publish: a default memory bus would mark every row published
/// while the events vanish with the process.
#[test]
fn the_relay_refuses_to_start_without_a_bus_and_warns_about_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let out = refused(courier().args(["relay", "--db", &db]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("courier relay needs a bus"), "{stderr}");

    let relay = RelayProcess::start(&db, "memory", "explicit-memory", &[]);
    let out = relay.terminate();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("vanish when this process exits"), "no warning about the memory bus: {stderr}");
}

/// Runs a relay that must refuse to start; fails the test if it is still running after 30 s.
fn refused(command: &mut Command) -> Output {
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the relay started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A zero lease once panicked the lease keeper, and the relay went on holding no partition,
/// silently idle: such settings are refused at startup, naming the key.
#[test]
fn nonsensical_relay_settings_are_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("outbox.db").display());
    for (variable, value, expected) in [
        ("COURIER_RELAY__LEASE_TTL", "0s", "lease_ttl"),
        ("COURIER_RELAY__BATCH_SIZE", "0", "batch_size"),
        ("COURIER_RELAY__POLL_INTERVAL", "0s", "poll_interval"),
    ] {
        let out = refused(courier().args(["relay", "--db", &db, "--bus", "memory"]).env(variable, value));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{variable}={value}: {stderr}");
        assert!(stderr.contains(expected), "{variable}={value} should name {expected}: {stderr}");
    }
    // A lease the bus's publishes could outlast: the relay could never publish safely. Refused
    // before connecting to anything (nothing listens on these ports).
    for bus in ["nats://127.0.0.1:1", "kafka://127.0.0.1:1"] {
        let out = refused(
            courier().args(["relay", "--db", &db, "--bus", bus]).env("COURIER_RELAY__LEASE_TTL", "5s"),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bus}: {stderr}");
        assert!(stderr.contains("relay setting lease_ttl: 5s is too short for this bus"), "{bus}: {stderr}");
    }
}

/// Kubernetes injects `COURIER_*` variables for a Service named `courier` (or `courier-relay`)
/// into every pod of its namespace; the relay must start next to one.
#[test]
fn the_relay_starts_next_to_a_kubernetes_service_named_courier() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let injected = [
        ("COURIER_PORT", "tcp://10.96.0.7:9464"),
        ("COURIER_PORT_9464_TCP", "tcp://10.96.0.7:9464"),
        ("COURIER_PORT_9464_TCP_ADDR", "10.96.0.7"),
        ("COURIER_SERVICE_HOST", "10.96.0.7"),
        ("COURIER_SERVICE_PORT", "9464"),
        ("COURIER_RELAY_PORT", "tcp://10.96.0.8:9464"),
        ("COURIER_RELAY_SERVICE_HOST", "10.96.0.8"),
    ];
    let relay = RelayProcess::start(&db, "memory", "k8s-neighbour", &injected);
    wait_until(Duration::from_secs(30), "ready", || relay.get("/readyz").is_some_and(|(s, _)| s == 200));
    assert!(relay.terminate().status.success());
}

fn relay_with_config(config: &Path) -> Output {
    courier().args(["relay", "--config"]).arg(config).output().unwrap()
}

#[test]
fn invalid_config_files_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[relay]\nbatch_sise = 5\n", "unknown configuration key `relay.batch_sise`"),
        ("[relay]\nlease_ttl = \"soon\"\n", "key `relay.lease_ttl`"),
        ("[bus]\nurl = \"redis://x\"\n", "unsupported bus URL \"redis://x\""),
        ("[http]\nlisten = 9464\n", "key `http.listen`"),
        ("[relay\n", "is not valid TOML"),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("courier.toml");
        std::fs::write(&path, text).unwrap();
        let out = relay_with_config(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(stderr.contains(expected), "{text:?}: expected {expected:?} in {stderr}");
    }
    let out = relay_with_config(&dir.path().join("missing.toml"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn reference_toml_documents_every_key_and_parses() {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/reference.toml");
    let out = courier()
        .args(["outbox", "--config"])
        .arg(&reference)
        .args(["--db", "sqlite::memory:", "stats"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_from_enqueue_reaches_the_broker_headers() {
    use futures::StreamExt;
    let db = TestDb::new().await;
    let topic = unique("relay-trace").replace('_', "-");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    run_ok(
        courier()
            .args(["outbox", "--db", &db.url, "enqueue", "--topic", &topic, "--aggregate-id", "acct-1"])
            .args(["--event-type", "Deposited", "--traceparent", traceparent]),
    );
    let relay = RelayProcess::start(&db.url, SHARED_NATS, &topic, &[]);
    wait_until(Duration::from_secs(30), "published", || {
        relay.metric("courier_outbox_published_total") == 1.0
    });
    assert!(relay.terminate().status.success());

    let js = async_nats::jetstream::new(async_nats::connect(SHARED_NATS).await.unwrap());
    let stream =
        js.get_stream(courier_nats::stream_name(&courier_core::Topic::new(&*topic).unwrap())).await.unwrap();
    let consumer =
        stream.create_consumer(async_nats::jetstream::consumer::pull::Config::default()).await.unwrap();
    let mut messages = consumer.fetch().max_messages(1).messages().await.unwrap();
    let message = messages.next().await.expect("one message").unwrap();
    let headers = message.headers.as_ref().expect("headers");
    assert_eq!(headers.get("ce-traceparent").map(|v| v.as_str()), Some(traceparent));
    assert_eq!(headers.get("ce-subject").map(|v| v.as_str()), Some("acct-1"));
}

/// `[topics.defaults]` reaches the JetStream stream the relay provisions: its age limit, byte
/// limit and duplicate window (set here through environment variables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_streams_take_the_configured_limits() {
    let (db, nats) = (TestDb::new().await, PrivateNats::start());
    let topic = unique("provisioned").replace('_', "-");
    let limits = [
        ("COURIER_TOPICS__DEFAULTS__MAX_AGE", "7d"),
        ("COURIER_TOPICS__DEFAULTS__MAX_BYTES", "1048576"),
        ("COURIER_TOPICS__DEFAULTS__DUPLICATE_WINDOW", "5m"),
    ];
    let relay = RelayProcess::start(&db.url, &nats.url(), &topic, &limits);
    wait_until(Duration::from_secs(30), "the relay ready", || {
        relay.get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let topic = courier_core::Topic::new(topic).unwrap();
    let mut stream = js.get_stream(courier_nats::stream_name(&topic)).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(config.max_bytes, 1_048_576);
    assert_eq!(config.duplicate_window, Duration::from_secs(300));
    assert!(relay.terminate().status.success());
}
