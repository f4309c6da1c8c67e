//! Connecting to a secured Kafka, against real brokers:
//! - TLS: a private Tansu behind a TLS listener (socat) with a CA and server certificate made at
//!   test time: publish, provision and consume over TLS, and an untrusted CA refused with an
//!   error that names the TLS failure.
//! - SASL: a private Tansu that requires authentication (SCRAM-SHA-512), over plain TCP
//!   (SASL_PLAINTEXT) and behind the TLS listener (SASL_SSL): credentials it does not accept fail
//!   with an error that says authentication failed and never shows the password.
//!
//! Not tested here, as no broker on this machine supports it: a successful SASL login (Tansu 0.6
//! offers no PLAIN, and with its memory storage no SCRAM user can be created once authentication
//! is required; librdkafka's mock cluster has neither SASL nor TLS), and mutual TLS (client
//! certificates: socat could ask for them, but Tansu would not see the identity).
//!
//! Also: librdkafka properties Courier owns are refused at connect, and a misspelt secret
//! property is refused without its value.

use std::path::PathBuf;
use std::time::Duration;

use courier_conformance::local::free_port;
use courier_conformance::tansu_server::{PrivateTansu, TlsProxy};
use courier_core::dispatch::Delivery;
use courier_core::{Bus, Envelope, Error, ErrorKind, PublisherConfig, Topic, TopicConfig};
use courier_kafka::{KafkaBus, KafkaConfig};
use futures::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA and a server certificate for 127.0.0.1 it signed, in a directory removed on drop.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("courier-kafka-tls-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_pem, issuer) = certificate_authority();
        let server_key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let server = server.signed_by(&server_key, &issuer).unwrap();
        let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert, server.pem()).unwrap();
        std::fs::write(&key, server_key.serialize_pem()).unwrap();
        Self { dir, ca_pem, cert, key }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh CA: its certificate (PEM) and what signs with it.
fn certificate_authority() -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: a certificate whose issuer is its subject is taken as self-signed.
    params.distinguished_name.push(DnType::CommonName, "courier test CA");
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A Tansu that clients reach only through a TLS listener, which Tansu advertises.
struct TlsTansu {
    port: u16,
    _proxy: TlsProxy,
    _tansu: PrivateTansu,
}

impl TlsTansu {
    /// `authentication`: Tansu requires SASL (SCRAM), spoken over the TLS connection.
    fn start(pki: &Pki, authentication: bool) -> Self {
        let port = free_port();
        let tansu = PrivateTansu::start(authentication, Some(port));
        let proxy = TlsProxy::start(port, &pki.cert, &pki.key, tansu.port);
        Self { port, _proxy: proxy, _tansu: tansu }
    }

    /// A bus config for it trusting `ca_pem`; the 30 s delivery timeout is for a loaded machine.
    fn config(&self, ca_pem: &str) -> KafkaConfig {
        KafkaConfig::new(format!("127.0.0.1:{}", self.port))
            .delivery_timeout(Duration::from_secs(30))
            .set("security.protocol", "SSL")
            .set("ssl.ca.pem", ca_pem)
    }
}

fn fresh_topic(test: &str) -> Topic {
    Topic::new(format!("kafka-{test}-{}", uuid::Uuid::now_v7().simple())).unwrap()
}

fn event() -> Envelope {
    Envelope::builder("order", "order-1", "OrderPlaced").payload("{}").build().unwrap()
}

/// The verdict of publishing one event.
async fn publish(bus: &KafkaBus, topic: &Topic, event: Envelope) -> Result<courier_core::Receipt, Error> {
    let publisher = bus.publisher(PublisherConfig::default());
    let verdict = publisher.publish(topic, event).await?.await;
    let _ = publisher.close().await;
    verdict
}

/// `check` on health errors until one names the problem: librdkafka reports it from its own
/// thread, at the first connection attempt, which a loaded machine may delay.
async fn health_error_naming(bus: &KafkaBus, needle: &str) -> Error {
    let mut last = None;
    for _ in 0..30 {
        match bus.health().await {
            Ok(()) => panic!("the broker answered despite the failure injected"),
            Err(err) if err.message().contains(needle) => return err,
            Err(err) => last = Some(err),
        }
    }
    panic!("no health error named {needle:?}; the last one: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_provision_publish_and_consume() {
    let pki = Pki::new();
    let broker = TlsTansu::start(&pki, false);
    let bus = KafkaBus::connect(broker.config(&pki.ca_pem)).unwrap();
    bus.health().await.unwrap();
    let topic = fresh_topic("tls");
    bus.provision(&TopicConfig::new(topic.clone())).await.unwrap();
    let sent = event();
    let receipt = publish(&bus, &topic, sent.clone()).await.unwrap();
    assert_eq!(receipt.event_id, sent.event_id());
    let mut deliveries = bus.subscribe(&topic, "tls-readers").await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(120), deliveries.next())
        .await
        .expect("a delivery over TLS within 120 s")
        .expect("the subscription is open");
    assert_eq!(delivery.envelope().event_id(), sent.event_id());
    delivery.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_an_untrusted_ca_fails_naming_the_tls_failure() {
    let pki = Pki::new();
    let broker = TlsTansu::start(&pki, false);
    let (other_ca, _) = certificate_authority();
    let config = broker.config(&other_ca).delivery_timeout(Duration::from_secs(3));
    let bus = KafkaBus::connect(config).unwrap();
    let err = health_error_naming(&bus, "TLS connection failed").await;
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.message().contains("certificate verify failed"), "{err}");
    let err = publish(&bus, &fresh_topic("tls-untrusted"), event()).await.unwrap_err();
    assert!(err.message().starts_with("the TLS connection failed"), "{err}");
    assert!(err.is_retryable(), "a certificate can be fixed on the broker while the bus runs: {err}");
}

/// Credentials the broker refuses: over plain TCP (SASL_PLAINTEXT) and inside TLS (SASL_SSL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_with_credentials_the_broker_refuses_fails_naming_authentication() {
    let plain = PrivateTansu::start(true, None);
    let config =
        KafkaConfig::new(format!("127.0.0.1:{}", plain.port)).set("security.protocol", "SASL_PLAINTEXT");
    refused_credentials_are_named(config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_with_credentials_the_broker_refuses_fails_naming_authentication() {
    let pki = Pki::new();
    let broker = TlsTansu::start(&pki, true);
    refused_credentials_are_named(broker.config(&pki.ca_pem).set("security.protocol", "SASL_SSL")).await;
}

/// Health, provisioning and a publish on `config` with SCRAM credentials the broker does not
/// know fail with a connection error that says authentication failed, without the password.
async fn refused_credentials_are_named(config: KafkaConfig) {
    let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let config = config
        .delivery_timeout(Duration::from_secs(3))
        .admin_timeout(Duration::from_secs(3))
        .set("sasl.mechanisms", "SCRAM-SHA-512")
        .set("sasl.username", "courier")
        .set("sasl.password", &password);
    assert!(!format!("{config:?}").contains(&password));
    let bus = KafkaBus::connect(config).unwrap();
    let health = health_error_naming(&bus, "authentication failed").await;
    let provision = bus.provision(&TopicConfig::new(fresh_topic("sasl"))).await.unwrap_err();
    let publish = publish(&bus, &fresh_topic("sasl"), event()).await.unwrap_err();
    for err in [health, provision, publish] {
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("authentication failed: ") && shown.contains("SCRAM"), "{shown}");
        assert!(!shown.contains(&password), "{shown}");
    }
}

#[test]
fn properties_courier_owns_are_refused_at_connect() {
    for (key, value, instead) in [
        ("acks", "1", "always `all`"),
        ("message.timeout.ms", "300000", "delivery_timeout"),
        ("enable.idempotence", "false", "idempotent producer"),
    ] {
        let err = KafkaBus::connect(KafkaConfig::new("127.0.0.1:9092").set(key, value)).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.message().contains(&format!("`{key}` cannot be set")) && err.message().contains(instead),
            "{err}"
        );
    }
}

#[test]
fn a_misspelt_secret_property_is_refused_without_its_value() {
    let config = KafkaConfig::new("127.0.0.1:9092").set("sasl.pasword", "hunter2-not-shown");
    let err = KafkaBus::connect(config).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Config);
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("`sasl.pasword`") && !shown.contains("hunter2"), "{shown}");
}
