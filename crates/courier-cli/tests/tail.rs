//! `courier tail` as a real process against NATS (127.0.0.1:4222) and Tansu (127.0.0.1:9092),
//! each test on a fresh topic: what it prints, where it starts, what a group and an ephemeral
//! reader change, and how it shows a message another client wrote that is not a Courier event.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use courier_core::{Bus, Envelope, PublisherConfig, Topic, TopicConfig};
use courier_kafka::{KafkaBus, KafkaConfig};
use courier_nats::{NatsBus, NatsConfig};
use serde_json::Value;

const NATS: &str = "nats://127.0.0.1:4222";
const KAFKA: &str = "127.0.0.1:9092";
/// Only a guard against a hung process: every run here ends on its own well before.
const HANG_GUARD: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug)]
enum Broker {
    Nats,
    Kafka,
}

impl Broker {
    fn url(self) -> String {
        match self {
            Self::Nats => NATS.to_owned(),
            Self::Kafka => format!("kafka://{KAFKA}"),
        }
    }

    /// A fresh topic, provisioned.
    async fn fresh_topic(self, name: &str) -> Topic {
        let topic = Topic::new(format!("tail-{name}-{}", uuid::Uuid::now_v7().simple())).unwrap();
        let config = TopicConfig::new(topic.clone());
        match self {
            Self::Nats => nats().await.provision(&config).await.unwrap(),
            Self::Kafka => kafka().provision(&config).await.unwrap(),
        }
        topic
    }

    /// Publishes `events` through Courier, each acknowledged before the next.
    async fn publish(self, topic: &Topic, events: &[Envelope]) {
        match self {
            Self::Nats => publish(&nats().await, topic, events).await,
            Self::Kafka => publish(&kafka(), topic, events).await,
        }
    }

    /// Publishes `body` with an independent client (nats-py, kafka-python), no Courier headers.
    fn publish_raw(self, topic: &Topic, body: &[u8]) {
        let script = match self {
            Self::Nats => {
                "import asyncio, sys, nats\n\
                async def main():\n\
                \x20   nc = await nats.connect(sys.argv[1])\n\
                \x20   await nc.jetstream().publish(sys.argv[2], bytes.fromhex(sys.argv[3]))\n\
                \x20   await nc.close()\n\
                asyncio.run(main())\n"
            }
            Self::Kafka => {
                "import sys\n\
                from kafka import KafkaProducer\n\
                p = KafkaProducer(bootstrap_servers=sys.argv[1], acks='all')\n\
                p.send(sys.argv[2], value=bytes.fromhex(sys.argv[3])).get(timeout=60)\n\
                p.close()\n"
            }
        };
        let server = match self {
            Self::Nats => NATS,
            Self::Kafka => KAFKA,
        };
        let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
        let out = Command::new("python3")
            .args(["-c", script, server, topic.as_str(), &hex])
            .output()
            .expect("python3 runs (scripts/services.sh installs nats-py and kafka-python)");
        assert!(out.status.success(), "raw publish failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

async fn nats() -> NatsBus {
    NatsBus::connect(NatsConfig::new(NATS)).await.unwrap()
}

fn kafka() -> KafkaBus {
    KafkaBus::connect(KafkaConfig::new(KAFKA)).unwrap()
}

async fn publish<B: Bus>(bus: &B, topic: &Topic, events: &[Envelope]) {
    let publisher = bus.publisher(PublisherConfig::default());
    for event in events {
        publisher.publish(topic, event.clone()).await.unwrap().await.unwrap();
    }
    publisher.close().await.unwrap();
}

fn order(n: usize) -> Envelope {
    Envelope::builder("order", format!("order-{n}"), "OrderPlaced")
        .event_version(2)
        .payload(format!(r#"{{"total":{n}}}"#))
        .header("source", "shop")
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

/// A running `courier tail`.
struct Tail {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Tail {
    /// Starts `courier tail ARGS` and returns once it reads (it says so on stderr).
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .arg("tail")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (ready_tx, ready) = mpsc::channel();
        let (stderr_tx, stderr) = mpsc::channel();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut text = String::new();
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                if line.starts_with("reading topic") {
                    let _ = ready_tx.send(());
                }
                text.push_str(&line);
                line.clear();
            }
            let _ = stderr_tx.send(text);
        });
        let (stdout_tx, stdout) = mpsc::channel();
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            let _ = stdout_tx.send(text);
        });
        let tail = Self { child, stdout, stderr };
        if ready.recv_timeout(HANG_GUARD).is_err() {
            let output = tail.finish();
            panic!("courier tail did not start reading: {}", String::from_utf8_lossy(&output.stderr));
        }
        tail
    }

    /// Waits for the process to exit.
    fn finish(mut self) -> Output {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > HANG_GUARD {
                self.child.kill().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self.stdout.recv().unwrap().into_bytes();
        let stderr = self.stderr.recv().unwrap().into_bytes();
        Output { status, stdout, stderr }
    }
}

/// Runs `courier tail ARGS` to its end and returns its JSON lines; it must exit 0.
fn tail_json(args: &[&str]) -> Vec<Value> {
    let out = Tail::start(args).finish();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "tail failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(|line| serde_json::from_str(line).expect("one JSON object per line")).collect()
}

fn aggregate_ids(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|l| l["aggregate_id"].as_str().unwrap_or("<none>")).collect()
}

fn prints_events_with_their_fields_in_order(broker: Broker) {
    let rt = runtime();
    let topic = rt.block_on(broker.fresh_topic("fields"));
    let events: Vec<_> = (0..3).map(order).collect();
    rt.block_on(broker.publish(&topic, &events));
    let url = broker.url();
    let lines = tail_json(&["--bus", &url, topic.as_str(), "--from", "start", "--limit", "3", "--json"]);
    assert_eq!(lines.len(), 3, "--limit 3 stops after three: {lines:?}");
    for (event, line) in events.iter().zip(&lines) {
        assert_eq!(line["event_id"], event.event_id().to_string());
        assert_eq!(line["aggregate_type"], "order");
        assert_eq!(line["aggregate_id"], event.aggregate_id());
        assert_eq!(line["event_type"], "OrderPlaced");
        assert_eq!(line["event_version"], 2);
        assert_eq!(line["headers"]["source"], "shop");
        assert_eq!(
            (&line["payload"], &line["payload_encoding"]),
            (&Value::from(std::str::from_utf8(event.payload()).unwrap()), &Value::from("utf8"))
        );
        assert!(line["position"].is_object() && line["timestamp"].is_string(), "{line}");
    }

    let out = Tail::start(&["--bus", &url, topic.as_str(), "--from", "start", "--limit", "1"]).finish();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    for expected in [
        format!("id: {}", events[0].event_id()),
        "aggregate: order order-0".into(),
        "type: OrderPlaced version 2".into(),
        "headers: source=shop".into(),
        r#"payload: {"total":0}"#.into(),
    ] {
        assert!(text.contains(&expected), "{expected:?} in:\n{text}");
    }
}

#[test]
fn nats_tail_prints_events_with_their_fields_in_order() {
    prints_events_with_their_fields_in_order(Broker::Nats);
}

#[test]
fn kafka_tail_prints_events_with_their_fields_in_order() {
    prints_events_with_their_fields_in_order(Broker::Kafka);
}

fn from_new_or_a_time_sees_only_later_events(broker: Broker) {
    let rt = runtime();
    let topic = rt.block_on(broker.fresh_topic("from"));
    rt.block_on(broker.publish(&topic, &[order(0), order(1)]));
    // Well clear of the stored times on either side, whatever the clocks' resolution.
    std::thread::sleep(Duration::from_secs(1));
    let between = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_secs(1));
    let url = broker.url();
    let new = Tail::start(&["--bus", &url, topic.as_str(), "--from", "new", "--limit", "1", "--json"]);
    rt.block_on(broker.publish(&topic, &[order(2)]));
    let out = new.finish();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["aggregate_id"], "order-2");

    let lines = tail_json(&["--bus", &url, topic.as_str(), "--from", &between, "--limit", "1", "--json"]);
    assert_eq!(aggregate_ids(&lines), ["order-2"]);
}

#[test]
fn nats_tail_from_new_or_a_time_sees_only_later_events() {
    from_new_or_a_time_sees_only_later_events(Broker::Nats);
}

#[test]
fn kafka_tail_from_new_or_a_time_sees_only_later_events() {
    from_new_or_a_time_sees_only_later_events(Broker::Kafka);
}

/// How many consumers the stream of `topic` has.
async fn nats_consumers(topic: &Topic) -> usize {
    let js = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
    let mut stream = js.get_stream(courier_nats::stream_name(topic)).await.unwrap();
    stream.info().await.unwrap().state.consumer_count
}

fn a_group_acknowledges_and_an_ephemeral_reader_moves_nothing(broker: Broker) {
    let rt = runtime();
    let topic = rt.block_on(broker.fresh_topic("group"));
    rt.block_on(broker.publish(&topic, &[order(0), order(1)]));
    let url = broker.url();
    let base = ["--bus", &url, topic.as_str(), "--from", "start", "--json"];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |args: Vec<String>| tail_json(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let ephemeral = run(with(&["--limit", "2"]));
    assert_eq!(aggregate_ids(&ephemeral), ["order-0", "order-1"]);
    if let Broker::Nats = broker {
        let consumers = rt.block_on(nats_consumers(&topic));
        assert_eq!(consumers, 0, "the ephemeral reader's consumer is deleted when it exits");
    }

    let group = format!("audit-{}", uuid::Uuid::now_v7().simple());
    let grouped = run(with(&["--group", &group, "--limit", "2"]));
    assert_eq!(
        aggregate_ids(&grouped),
        ["order-0", "order-1"],
        "the ephemeral reader left the group unmoved"
    );

    rt.block_on(broker.publish(&topic, &[order(2)]));
    let again = run(with(&["--group", &group, "--limit", "1"]));
    assert_eq!(aggregate_ids(&again), ["order-2"], "the group resumes after what it acknowledged");
}

#[test]
fn nats_tail_group_acknowledges_and_an_ephemeral_reader_moves_nothing() {
    a_group_acknowledges_and_an_ephemeral_reader_moves_nothing(Broker::Nats);
}

#[test]
fn kafka_tail_group_acknowledges_and_an_ephemeral_reader_moves_nothing() {
    a_group_acknowledges_and_an_ephemeral_reader_moves_nothing(Broker::Kafka);
}

fn prints_an_undecodable_message_with_its_reason_then_goes_on(broker: Broker) {
    let rt = runtime();
    let topic = rt.block_on(broker.fresh_topic("garbage"));
    broker.publish_raw(&topic, b"\xff\x00not an event");
    rt.block_on(broker.publish(&topic, &[order(0)]));
    let url = broker.url();
    let lines = tail_json(&["--bus", &url, topic.as_str(), "--from", "start", "--limit", "2", "--json"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let garbage = &lines[0];
    assert!(garbage["error"].as_str().is_some_and(|e| !e.is_empty()), "{garbage}");
    assert!(garbage["position"].is_object(), "{garbage}");
    assert_eq!(
        (&garbage["payload"], &garbage["payload_encoding"]),
        (&Value::from("/wBub3QgYW4gZXZlbnQ="), &Value::from("base64"))
    );
    assert_eq!(lines[1]["aggregate_id"], "order-0");

    let out = Tail::start(&["--bus", &url, topic.as_str(), "--from", "start", "--limit", "1"]).finish();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("undecodable: ") && text.contains("payload: hex:ff006e6f7420616e206576656e74"),
        "{text}"
    );
}

#[test]
fn nats_tail_prints_an_undecodable_message_with_its_reason_then_goes_on() {
    prints_an_undecodable_message_with_its_reason_then_goes_on(Broker::Nats);
}

#[test]
fn kafka_tail_prints_an_undecodable_message_with_its_reason_then_goes_on() {
    prints_an_undecodable_message_with_its_reason_then_goes_on(Broker::Kafka);
}

/// A record another client wrote with a header name that is not UTF-8 is printed as
/// undecodable, naming the header, and the tail goes on: rust-rdkafka's header accessors panic
/// on such a name.
#[test]
fn kafka_tail_prints_a_record_whose_header_name_is_not_utf8_then_goes_on() {
    use std::io::Write as _;
    let rt = runtime();
    let topic = rt.block_on(Broker::Kafka.fresh_topic("badheader"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../courier-kafka/tests/interop/produce_bytes.py");
    let mut producer = Command::new("python3")
        .args([script, KAFKA, topic.as_str()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let record = br#"{"key": "6b", "headers": [["78ff", "01"]], "value": "7b7d"}"#;
    producer.stdin.take().unwrap().write_all(&[&record[..], b"\n"].concat()).unwrap();
    let produced = producer.wait_with_output().unwrap();
    assert!(produced.status.success(), "produce_bytes.py failed: {produced:?}");
    rt.block_on(Broker::Kafka.publish(&topic, &[order(0)]));
    let url = Broker::Kafka.url();
    let lines = tail_json(&["--bus", &url, topic.as_str(), "--from", "start", "--limit", "2", "--json"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let error = lines[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains(r#"header name "x\xff" is not UTF-8"#), "{}", lines[0]);
    assert_eq!(lines[1]["aggregate_id"], "order-0");
}

#[test]
fn tail_usage_errors_exit_2_naming_the_problem() {
    let run =
        |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_courier")).arg("tail").args(args).output().unwrap();
    let unknown = run(&["--bus", NATS, "orders", "--bogus"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--bogus"), "{unknown:?}");
    let bad_from = run(&["--bus", NATS, "orders", "--from", "yesterday"]);
    assert_eq!(bad_from.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_from.stderr);
    assert!(stderr.contains("--from") && stderr.contains("\"yesterday\" is not start, new"), "{stderr}");
}

/// SIGTERM ends a tail that has no limit with status 0, and its ephemeral consumer is deleted.
#[test]
fn nats_tail_exits_cleanly_on_sigterm() {
    let rt = runtime();
    let topic = rt.block_on(Broker::Nats.fresh_topic("sigterm"));
    let tail = Tail::start(&["--bus", NATS, topic.as_str()]);
    assert_eq!(rt.block_on(nats_consumers(&topic)), 1, "the reader's consumer exists while it runs");
    let pid = tail.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = tail.finish();
    assert!(out.status.success(), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_eq!(rt.block_on(nats_consumers(&topic)), 0);
}

/// A group tail that stops at its limit returns what it pulled but did not print, so the group's
/// next tail gets those messages at once rather than after the consumer's `ack_wait`.
#[test]
fn nats_tail_group_resumes_at_the_first_unprinted_message() {
    let rt = runtime();
    let topic = rt.block_on(Broker::Nats.fresh_topic("unprinted"));
    rt.block_on(Broker::Nats.publish(&topic, &[order(0), order(1), order(2)]));
    let group = format!("audit-{}", uuid::Uuid::now_v7().simple());
    let args = |limit: &'static str| {
        ["--bus", NATS, topic.as_str(), "--group", &group, "--from", "start", "--limit", limit, "--json"]
            .map(str::to_owned)
    };
    let run = |args: [String; 10]| tail_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(aggregate_ids(&run(args("1"))), ["order-0"]);
    let ack_pending = rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
        let stream = js.get_stream(courier_nats::stream_name(&topic)).await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&group).await.unwrap();
        consumer.info().await.unwrap().num_ack_pending
    });
    assert_eq!(ack_pending, 0, "nothing is left handed out to the tail that exited");
    assert_eq!(aggregate_ids(&run(args("2"))), ["order-1", "order-2"]);
}
