//! `courier relay` against Kafka (Tansu):
//! - a broker that refuses its SASL credentials: a private Tansu that requires SCRAM
//!   authentication, with the password read from a `sasl.password_file` key. The relay must say
//!   that authentication failed, and nothing it prints or serves may contain the password;
//! - topics provisioned with the partitions of `[topics.defaults]` and `[topics.settings]`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier_conformance::local::{free_port, http_get as get};
use courier_conformance::tansu_server::PrivateTansu;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Runs `courier relay --config <file with text>`, its output going to files in `dir`.
fn relay(dir: &Path, text: &str) -> (Child, PathBuf, PathBuf) {
    let config = dir.join("courier.toml");
    std::fs::write(&config, text).unwrap();
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["relay", "--config", config.to_str().unwrap()])
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    (child, stdout, stderr)
}

/// Waits (generously, for a loaded machine) until `/readyz` on `listen` answers `status` with a
/// body that contains `needle`, and returns the body.
fn wait_for_readiness(relay: &mut Child, stderr: &Path, listen: &str, status: u16, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match get(listen, "/readyz") {
            Some((code, body)) if code == status && body.contains(needle) => return body,
            _ if Instant::now() > deadline => {
                let _ = relay.kill();
                panic!(
                    "/readyz never answered {status} with {needle:?}; stderr:\n{}",
                    std::fs::read_to_string(stderr).unwrap()
                );
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Stops the relay with SIGTERM and checks that it exits cleanly.
fn terminate(mut relay: Child) {
    assert!(Command::new("kill").args(["-TERM", &relay.id().to_string()]).status().unwrap().success());
    let status = relay.wait().unwrap();
    assert!(status.success(), "the relay exits cleanly on SIGTERM: {status}");
}

#[test]
fn a_refused_sasl_password_from_a_file_is_reported_as_an_authentication_failure_and_never_printed() {
    let broker = PrivateTansu::start(true, None);
    let dir = tempfile::tempdir().unwrap();
    let password = format!("kafka-pw-{}", uuid::Uuid::now_v7().simple());
    let password_file = dir.path().join("kafka-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let text = format!(
        "[database]\nurl = \"sqlite://{db}\"\n\
         [bus]\nurl = \"kafka://127.0.0.1:{port}\"\n\
         [bus.kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
         \"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"courier\"\n\
         \"sasl.password_file\" = {file:?}\n\"debug\" = \"security,broker,conf\"\n\
         [http]\nlisten = \"{listen}\"\n[log]\nlevel = \"debug\"\n",
        db = dir.path().join("outbox.db").display(),
        port = broker.port,
        file = password_file.to_str().unwrap(),
    );
    let (mut relay, stdout, stderr) = relay(dir.path(), &text);
    let readiness = wait_for_readiness(&mut relay, &stderr, &listen, 503, "authentication failed");
    let (_, metrics) = get(&listen, "/metrics").expect("/metrics answers");
    terminate(relay);

    let printed = std::fs::read_to_string(&stdout).unwrap() + &std::fs::read_to_string(&stderr).unwrap();
    assert!(printed.contains("SCRAM authentication failed"), "librdkafka's report is logged:\n{printed}");
    for (what, text) in [("printed output", &printed), ("/readyz", &readiness), ("/metrics", &metrics)] {
        assert!(!text.contains(&password), "the password appears in {what}:\n{text}");
    }
}

#[test]
fn topics_are_provisioned_with_their_configured_partitions() {
    let broker = PrivateTansu::start(false, None);
    let dir = tempfile::tempdir().unwrap();
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let (orders, audit) = (format!("orders-{suffix}"), format!("audit-{suffix}"));
    let listen = format!("127.0.0.1:{}", free_port());
    let text = format!(
        "[database]\nurl = \"sqlite://{db}\"\n[bus]\nurl = \"kafka://127.0.0.1:{port}\"\n\
         [topics]\nprovision = [{orders:?}, {audit:?}]\n[topics.defaults]\npartitions = 2\n\
         [topics.settings]\n{orders:?} = {{ partitions = 5, max_age = \"7d\" }}\n\
         [http]\nlisten = \"{listen}\"\n",
        db = dir.path().join("outbox.db").display(),
        port = broker.port,
    );
    let (mut relay, _, stderr) = relay(dir.path(), &text);
    wait_for_readiness(&mut relay, &stderr, &listen, 200, "");
    terminate(relay);

    let client: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", format!("127.0.0.1:{}", broker.port)).create().unwrap();
    let metadata = client.fetch_metadata(None, Duration::from_secs(30)).unwrap();
    let partitions =
        |name: &str| metadata.topics().iter().find(|t| t.name() == name).map(|t| t.partitions().len());
    assert_eq!(partitions(&orders), Some(5), "[topics.settings]");
    assert_eq!(partitions(&audit), Some(2), "[topics.defaults]");
}
