//! The operator dashboard over real HTTP: `courier dashboard` on PostgreSQL, MariaDB and SQLite
//! (the JSON API, the admin token, escaping on the pages), and the dashboard of `courier relay`
//! (relay instances, charts from the relay's own figures).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier_conformance::local::{free_port, http_get, http_request};
use courier_core::{Envelope, Topic, TraceContext};
use courier_outbox::{Enqueue, Outbox, Store};
use serde_json::Value;

const TOKEN: &str = "t0ken-for-tests";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const SCRIPT: &str = "<script>alert(1)</script>";

/// A fresh database on one of the shared servers (or a SQLite file), dropped at the end.
struct Database {
    url: String,
    drop_with: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Database {
    async fn new(server: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("courier_dash_{}", uuid::Uuid::now_v7().simple());
        if server == "sqlite" {
            let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
            return Self { url, drop_with: None, _dir: dir };
        }
        let admin = Store::connect(&format!("{server}/test"))
            .await
            .unwrap_or_else(|e| panic!("{server} is required (scripts/services.sh starts it): {e}"));
        admin.execute_raw(&format!("CREATE DATABASE {name}")).await.unwrap();
        Self { url: format!("{server}/{name}"), drop_with: Some((format!("{server}/test"), name)), _dir: dir }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.drop_with.take() {
            // Best effort, on a runtime of its own: the test's runtime is shutting down.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    if let Ok(admin) = Store::connect(&admin).await {
                        let _ = admin.execute_raw(&format!("DROP DATABASE {name}")).await;
                    }
                })
            })
            .join();
        }
    }
}

/// A `courier` process serving HTTP on `addr`, killed at the end; its log goes to a file.
struct Served {
    child: Child,
    addr: String,
    log: tempfile::NamedTempFile,
}

impl Served {
    fn start(args: &[&str], addr: String) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(args)
            .env("COURIER_HTTP__ADMIN_TOKEN", TOKEN)
            .env("COURIER_HTTP__ADMIN_TOKEN_NAME", "alice")
            .env("COURIER_LOG__LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let served = Self { child, addr, log };
        served.wait_for("the dashboard to answer", |s| s.get("/api/v1/overview").0 == 200);
        served
    }

    fn dashboard(db: &str) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        Self::start(&["dashboard", "--db", db, "--listen", &addr], addr.clone())
    }

    fn request(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
        http_request(&self.addr, method, path, &headers).unwrap_or((0, String::new()))
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path).unwrap_or((0, String::new()))
    }

    /// `GET path` as JSON, which must answer 200.
    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `POST path` with the admin token as JSON, which must answer 200.
    fn post(&self, path: &str) -> Value {
        let (status, body) = self.request("POST", path, Some(TOKEN));
        assert_eq!(status, 200, "POST {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    /// Waits (up to a minute, for a loaded machine) until `done`, else fails naming `what`.
    fn wait_for(&self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ids(page: &Value) -> Vec<i64> {
    page["events"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

/// Enqueues order-1 (three events, the first carrying markup in its payload and headers and a
/// trace context) and order-2 (two), then makes each one's first event dead as the relay does
/// after its last attempt. Returns the ids of the two dead heads.
async fn seed(url: &str) -> (i64, i64) {
    let store = Store::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    let topic = Topic::new("orders").unwrap();
    for (aggregate, count) in [("order-1", 3), ("order-2", 2)] {
        for n in 0..count {
            let mut event =
                Envelope::builder("order", aggregate, if n == 0 { "OrderPlaced" } else { "OrderPaid" })
                    .payload(serde_json::json!({ "n": n, "note": SCRIPT }).to_string());
            if n == 0 {
                event = event.header("x-note", SCRIPT).trace(TraceContext::new(TRACEPARENT, None).unwrap());
            }
            let event = event.build().unwrap();
            store.enqueue(&Outbox::default(), &[Enqueue::new(&event).topic(&topic)]).await.unwrap();
        }
    }
    let first = store.bench_bury_head("order-1").await.unwrap().unwrap();
    let second = store.bench_bury_head("order-2").await.unwrap().unwrap();
    store.close().await;
    (first, second)
}

async fn api_and_pages_on(server: &str) {
    let db = Database::new(server).await;
    let seeded = chrono::Utc::now();
    let (head1, head2) = seed(&db.url).await;
    // The overview's bounded count stops at its cap.
    let store = Store::connect(&db.url).await.unwrap();
    let all = courier_outbox::EventFilter::default();
    assert_eq!(store.count_events_up_to(None, &all, 3).await.unwrap(), 3);
    assert_eq!(store.count_events_up_to(None, &all, 100).await.unwrap(), 5);
    store.close().await;
    let dash = Served::dashboard(&db.url);

    let overview = dash.json("/api/v1/overview");
    assert_eq!(
        overview["counts"],
        serde_json::json!({ "pending": 3, "published": 0, "dead": 2 }),
        "{overview}"
    );
    assert!(overview["oldest_pending_age_s"].as_f64().unwrap() >= 0.0, "{overview}");
    assert_eq!(overview["relays"], serde_json::json!([]));

    // Keyset pages, newest first: two pages of 3 and 2 cover every event once.
    let first = dash.json("/api/v1/events?limit=3");
    let next = first["next_before"].as_i64().expect("a full page links to the next");
    let second = dash.json(&format!("/api/v1/events?limit=3&before={next}"));
    let mut all = ids(&first);
    all.extend(ids(&second));
    assert_eq!(all.len(), 5, "{first} {second}");
    assert!(all.windows(2).all(|w| w[0] > w[1]), "not newest first: {all:?}");
    assert_eq!(second["next_before"], Value::Null);

    // Filters.
    assert_eq!(ids(&dash.json("/api/v1/events?status=dead")), vec![head2, head1]);
    assert_eq!(ids(&dash.json("/api/v1/events?error=buried&topic=orders&event_type=OrderPlaced")).len(), 2);
    assert_eq!(ids(&dash.json("/api/v1/events?status=pending&aggregate_id=order-2")).len(), 1);
    assert_eq!(
        ids(&dash.json("/api/v1/events?aggregate_type=order&from=2000-01-01T00:00:00Z&to=2999-01-01T00:00"))
            .len(),
        5
    );
    assert_eq!(ids(&dash.json("/api/v1/events?to=2000-01-01T00:00:00Z")).len(), 0);
    let (status, body) = dash.get("/api/v1/events?offset=50");
    assert!(status == 400 && body.contains("unknown parameter \\\"offset\\\""), "{status} {body}");

    // Detail: every column, headers, payload, trace id.
    let detail = dash.json(&format!("/api/v1/events/{head1}"));
    assert_eq!(detail["status"], "dead");
    assert_eq!(detail["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(detail["headers"]["x-note"], SCRIPT);
    assert_eq!(detail["payload"]["encoding"], "json");
    assert!(detail["payload"]["text"].as_str().unwrap().contains("\"note\": \"<script>"), "{detail}");
    assert_eq!(dash.get("/api/v1/events/999999").0, 404);

    // Parked aggregates: each head with the events waiting behind it, and since when it is dead.
    let parked = dash.json("/api/v1/parked");
    let dead_since = |p: &Value| {
        let at = p["head"]["last_attempt_at"].as_str().expect("when the head went dead");
        chrono::DateTime::parse_from_rfc3339(at).expect("an RFC 3339 time").with_timezone(&chrono::Utc)
    };
    let parked: Vec<(i64, u64)> = parked["parked"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|p| assert!(dead_since(p) >= seeded && dead_since(p) <= chrono::Utc::now(), "{p}"))
        .map(|p| (p["head"]["id"].as_i64().unwrap(), p["waiting"].as_u64().unwrap()))
        .collect();
    assert_eq!(parked, vec![(head1, 2), (head2, 1)]);

    // The CLI lists what the API lists, through the same store operations.
    let cli = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "outbox",
            "--db",
            &db.url,
            "dead",
            "--filter-error",
            "buried",
            "--filter-aggregate-id",
            "order-2",
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success() && listed.contains("1 dead event(s) listed"), "{listed}");

    // Changes: refused without the token (401) and with a wrong one (403), changing nothing.
    let path = format!("/api/v1/dead/requeue?id={head1}");
    let (status, body) = dash.request("POST", &path, None);
    assert!(status == 401 && body.contains("admin token"), "{status} {body}");
    assert_eq!(dash.request("POST", &path, Some("wrong")).0, 403);
    assert_eq!(dash.json("/api/v1/overview")["counts"]["dead"], 2);
    let (status, body) = dash.request("POST", "/api/v1/dead/requeue", Some(TOKEN));
    assert!(status == 400 && body.contains("all=true"), "{status} {body}");

    // A bulk action counts first, changing nothing.
    let counted = dash.post("/api/v1/dead/discard?all=true&dry_run=true");
    assert_eq!(counted["matched"], 2, "{counted}");
    assert_eq!(dash.json("/api/v1/overview")["counts"]["dead"], 2);

    // Requeue one; discard the other by filter.
    assert_eq!(dash.post(&path)["changed"], 1);
    assert_eq!(dash.json(&format!("/api/v1/events/{head1}"))["status"], "pending");
    assert_eq!(dash.post("/api/v1/dead/discard?aggregate_id=order-2")["changed"], 1);
    assert_eq!(
        dash.json("/api/v1/overview")["counts"],
        serde_json::json!({ "pending": 4, "published": 0, "dead": 0 })
    );
    assert_eq!(dash.get(&format!("/api/v1/events/{head2}")).0, 404);
    dash.wait_for("the changes in the log", |d| {
        d.log().matches("dashboard: dead events changed").count() == 2
    });
    let log = dash.log();
    assert!(log.contains("alice") && log.contains("requeue") && log.contains("discard"), "{log}");
    assert!(!log.contains(TOKEN), "the token reached the log:\n{log}");

    // Pages: event content is text, never markup.
    for page in [
        "/ui",
        "/ui/events",
        "/ui/dead",
        "/ui/parked",
        &format!("/ui/events/{head1}"),
        "/ui/events?status=pending",
    ] {
        let (status, body) = dash.get(page);
        assert_eq!(status, 200, "{page}: {body}");
        assert!(!body.contains("<script>alert"), "{page} carries live markup:\n{body}");
    }
    let (_, detail_page) = dash.get(&format!("/ui/events/{head1}"));
    assert!(detail_page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{detail_page}");
    assert!(
        detail_page.contains(r#"<code id="trace-id">4bf92f3577b34da6a3ce929d0e0e4736</code>"#),
        "{detail_page}"
    );
}

#[tokio::test]
async fn the_dashboard_api_and_pages_on_postgres() {
    api_and_pages_on("postgres://postgres@127.0.0.1:5432").await;
}

#[tokio::test]
async fn the_dashboard_api_and_pages_on_mariadb() {
    api_and_pages_on("mysql://root@127.0.0.1:3306").await;
}

#[tokio::test]
async fn the_dashboard_api_and_pages_on_sqlite() {
    api_and_pages_on("sqlite").await;
}

/// Without a configured token the dashboard is read-only: changes are refused even with a token.
#[tokio::test]
async fn without_an_admin_token_the_dashboard_is_read_only() {
    let db = Database::new("sqlite").await;
    seed(&db.url).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["dashboard", "--db", &db.url, "--listen", &addr])
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let dash = Served { child, addr, log };
    dash.wait_for("the dashboard to answer", |s| s.get("/api/v1/overview").0 == 200);
    let (status, body) = dash.request("POST", "/api/v1/dead/requeue?all=true", Some(TOKEN));
    assert!(status == 403 && body.contains("read-only"), "{status} {body}");
    assert_eq!(dash.json("/api/v1/overview")["counts"]["dead"], 2);
}

/// The relay's own listener serves the dashboard: it lists the relay with its partitions,
/// charts what the relay publishes, and a requeued head is published, releasing its aggregate.
#[tokio::test]
async fn the_relay_serves_the_dashboard_with_its_instances_and_charts() {
    let db = Database::new("sqlite").await;
    let (head1, _) = seed(&db.url).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let relay =
        Served::start(&["relay", "--db", &db.url, "--bus", "memory", "--listen", &addr], addr.clone());
    relay.wait_for("the relay to lease its partitions", |r| {
        let relays = r.json("/api/v1/overview")["relays"].clone();
        relays
            .as_array()
            .is_some_and(|list| list.len() == 1 && !list[0]["partitions"].as_array().unwrap().is_empty())
    });
    let path = format!("/api/v1/events/{head1}");
    assert_eq!(relay.json(&path)["status"], "dead");
    relay.post(&format!("/api/v1/dead/requeue?id={head1}"));
    relay.wait_for("the requeued head to be published", |r| r.json(&path)["status"] == "published");
    relay.wait_for("the events parked behind it to be published", |r| {
        r.json("/api/v1/events?status=published&aggregate_id=order-1")["events"].as_array().unwrap().len()
            == 3
    });
    relay.wait_for("a chart point with published events", |r| {
        let charts = r.json("/api/v1/charts");
        charts["points"].as_array().unwrap().iter().any(|p| p["published_per_s"].as_f64().unwrap() > 0.0)
    });
    let (status, page) = relay.get("/ui");
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"<div id="charts" data-refresh="/ui/charts"><svg"#) && page.contains("<polyline"),
        "{page}"
    );
    assert_eq!(relay.get("/metrics").0, 200);
}

/// The pages in a real browser (Debian's headless Chromium, driven by playwright-core from
/// `tests/browser`, which scripts/services.sh installs): overview, filtering dead events,
/// a requeue refused without the token and done with it, a bulk discard confirmed with its
/// count, the requeued event published once a relay runs (whose own `/ui` then charts it), and
/// a `<script>` payload shown inert.
/// Screenshots of each page go to `target/tmp/dashboard-screenshots`.
#[tokio::test]
async fn the_dashboard_in_a_browser() {
    let browser_tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists()
            && browser_tests.join("node_modules/playwright-core").exists(),
        "Chromium and playwright-core are required: run scripts/services.sh"
    );
    let db = Database::new("postgres://postgres@127.0.0.1:5432").await;
    let (head1, _) = seed(&db.url).await;
    let dash = Served::dashboard(&db.url);
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let relay_addr = format!("127.0.0.1:{}", free_port());
    let mut node = Command::new("node")
        .arg(browser_tests.join("dashboard.mjs"))
        .env("BASE_URL", format!("http://{}", dash.addr))
        .env("RELAY_URL", format!("http://{relay_addr}"))
        .env("TOKEN", TOKEN)
        .env("HEAD_ID", head1.to_string())
        .env("SHOTS", &shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is required (scripts/services.sh)");
    let stdout = std::io::BufRead::lines(std::io::BufReader::new(node.stdout.take().unwrap()));
    let mut relay = None;
    let mut output = Vec::new();
    for line in stdout {
        let line = line.unwrap();
        if line == "relay please" {
            relay = Some(Served::start(
                &["relay", "--db", &db.url, "--bus", "memory", "--listen", &relay_addr],
                relay_addr.clone(),
            ));
        }
        output.push(line);
    }
    let finished = node.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&finished.stderr);
    assert!(
        finished.status.success() && output.last().map(String::as_str) == Some("browser checks passed"),
        "the browser checks failed:\n{}\n{stderr}\nrelay log:\n{}",
        output.join("\n"),
        relay.as_ref().map(Served::log).unwrap_or_default()
    );
    for page in ["overview", "events", "parked", "dead", "detail", "relay-overview"] {
        assert!(shots.join(format!("{page}.png")).exists(), "no screenshot of {page}");
    }
}
