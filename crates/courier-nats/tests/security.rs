//! Credentials and TLS against private nats-servers started with each authentication method: the
//! right credential gets a publish its PubAck, a wrong one is refused at once with an error that
//! says so and never shows the secret; an untrusted CA or a missing client certificate fails with
//! an error naming TLS.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::event;
use courier_conformance::fresh_topic;
use courier_conformance::nats_server::PrivateServer;
use courier_conformance::tls_certs::TestCa;
use courier_core::{Bus, Error, ErrorKind, Position, PublisherConfig};
use courier_nats::{NatsBus, NatsConfig};
use nkeys::KeyPair;

/// Connects, bounded so that a hang fails the test instead of stalling it (the bound is generous:
/// a refusal takes milliseconds, the point is that it is an error, not a timeout).
async fn connect(config: NatsConfig) -> Result<NatsBus, Error> {
    tokio::time::timeout(Duration::from_secs(60), NatsBus::connect(config))
        .await
        .expect("connecting neither succeeded nor failed within 60 s")
}

/// A publish on a fresh topic gets its PubAck.
async fn assert_publish_acked(config: NatsConfig) {
    let bus = connect(config).await.expect("connects with the right credential");
    let topic = fresh_topic(&bus, "security").await;
    let publisher = bus.publisher(PublisherConfig::default());
    let receipt = publisher.publish(&topic, event("secure-1", "x")).await.unwrap().await.unwrap();
    assert!(matches!(receipt.position, Position::Stream { sequence: 1, .. }), "{:?}", receipt.position);
    publisher.close().await.unwrap();
}

/// The connection failed with a non-retryable error that says `words`, and `secret` appears
/// neither in its text nor its `Debug`.
fn assert_fails(result: Result<NatsBus, Error>, words: &str, secret: &str) -> Error {
    let error = result.err().expect("the connection must fail");
    let (text, debug) = (error.to_string(), format!("{error:?}"));
    assert_eq!(error.kind(), ErrorKind::Config, "{text}");
    assert!(!error.is_retryable());
    assert!(text.contains(words), "{text:?} does not say {words:?}");
    assert!(!secret.is_empty() && !text.contains(secret) && !debug.contains(secret), "secret shown: {debug}");
    error
}

const REFUSED: &str = "refused the credentials (authorization violation)";

#[tokio::test]
async fn user_and_password_from_settings_or_url_and_a_wrong_password_is_refused() {
    let password = "n4ts-Pa55-right";
    let server = PrivateServer::start(&format!("authorization {{ user: app, password: \"{password}\" }}"));
    let with_url = |userinfo: &str| format!("nats://{userinfo}@127.0.0.1:{}", server.port);
    assert_publish_acked(NatsConfig::new(server.url()).user_password("app", password)).await;
    assert_publish_acked(NatsConfig::new(with_url(&format!("app:{password}")))).await;

    let wrong = "n4ts-Pa55-wrong";
    let config = NatsConfig::new(server.url()).user_password("app", wrong);
    assert!(!format!("{config:?}").contains(wrong), "{config:?}");
    assert_fails(connect(config).await, REFUSED, wrong);
    let error =
        assert_fails(connect(NatsConfig::new(with_url(&format!("app:{wrong}")))).await, REFUSED, wrong);
    assert!(error.to_string().contains(&with_url("app:***")), "{error}");
    let missing = connect(NatsConfig::new(server.url())).await;
    assert_fails(missing, REFUSED, password);
}

#[tokio::test]
async fn a_url_with_credentials_and_credentials_set_too_is_refused() {
    let config = NatsConfig::new("nats://app:url-secret@127.0.0.1:4222").token("set-secret");
    let error = assert_fails(connect(config).await, "set one of them", "url-secret");
    assert!(!error.to_string().contains("set-secret"), "{error}");
}

#[tokio::test]
async fn token_from_settings_or_url_and_a_wrong_token_is_refused() {
    let token = "n4ts-T0ken-right";
    let server = PrivateServer::start(&format!("authorization {{ token: \"{token}\" }}"));
    assert_publish_acked(NatsConfig::new(server.url()).token(token)).await;
    assert_publish_acked(NatsConfig::new(format!("nats://{token}@127.0.0.1:{}", server.port))).await;

    let wrong = "n4ts-T0ken-wrong";
    assert_fails(connect(NatsConfig::new(server.url()).token(wrong)).await, REFUSED, wrong);
    let in_url = format!("nats://{wrong}@127.0.0.1:{}", server.port);
    let error = assert_fails(connect(NatsConfig::new(in_url)).await, REFUSED, wrong);
    assert!(error.to_string().contains("nats://***@127.0.0.1"), "{error}");
}

#[tokio::test]
async fn nkey_seed_and_a_seed_the_server_does_not_know_is_refused() {
    let user = KeyPair::new_user();
    let server =
        PrivateServer::start(&format!("authorization {{ users = [ {{ nkey: {} }} ] }}", user.public_key()));
    let seed = user.seed().unwrap();
    assert_publish_acked(NatsConfig::new(server.url()).nkey_seed(&seed)).await;
    assert!(!format!("{:?}", NatsConfig::new(server.url()).nkey_seed(&seed)).contains(&seed));

    let stranger = KeyPair::new_user().seed().unwrap();
    assert_fails(connect(NatsConfig::new(server.url()).nkey_seed(&stranger)).await, REFUSED, &stranger);
    let error = connect(NatsConfig::new(server.url()).nkey_seed("SUnot-a-seed")).await;
    assert_fails(error, "could not sign the server's nonce", "SUnot-a-seed");
}

/// Decentralized (JWT) authentication as `nsc` sets it up: an operator, a system account (which
/// JetStream needs), an account with JetStream enabled, a user; the server trusts the operator and
/// preloads the accounts.
#[tokio::test]
async fn creds_file_and_a_user_of_an_unknown_account_is_refused() {
    let (operator, system, account) =
        (KeyPair::new_operator(), KeyPair::new_account(), KeyPair::new_account());
    let server = PrivateServer::start(&format!(
        "operator: {}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{ {}: {}, {}: {} }}",
        jwt::operator(&operator),
        system.public_key(),
        system.public_key(),
        jwt::account(&operator, &system, false),
        account.public_key(),
        jwt::account(&operator, &account, true),
    ));
    let dir = tempfile::tempdir().unwrap();
    let user = KeyPair::new_user();
    let creds = jwt::write_creds(dir.path(), "app", &account, &user);
    assert_publish_acked(NatsConfig::new(server.url()).credentials_file(&creds)).await;

    let stranger = KeyPair::new_user();
    let unknown = jwt::write_creds(dir.path(), "stranger", &KeyPair::new_account(), &stranger);
    let seed = stranger.seed().unwrap();
    assert_fails(connect(NatsConfig::new(server.url()).credentials_file(&unknown)).await, REFUSED, &seed);
    let missing = dir.path().join("missing.creds");
    assert_fails(
        connect(NatsConfig::new(server.url()).credentials_file(&missing)).await,
        "missing.creds",
        &seed,
    );
}

/// A server with a certificate from the test's own CA that verifies client certificates.
#[tokio::test]
async fn tls_with_a_private_ca_and_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("courier-nats-test-ca");
    let ca_file = ca.write_cert(&dir.path().join("ca.crt"));
    let server_cert = ca.server(&["127.0.0.1", "localhost"], dir.path(), "server");
    let client = ca.client("courier", dir.path(), "client");
    let server = PrivateServer::start(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, timeout: 5 }}",
        server_cert.cert, server_cert.key, ca_file
    ));
    let trusted = || NatsConfig::new(server.url()).tls_ca_file(&ca_file);
    assert_publish_acked(trusted().tls_client_cert(&client.cert, &client.key)).await;

    let key = std::fs::read_to_string(&client.key).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    let no_client_cert = connect(trusted()).await;
    assert_fails(no_client_cert, "refused the TLS handshake", key_body);

    let other_ca = TestCa::new("someone-else").write_cert(&dir.path().join("other-ca.crt"));
    let untrusted =
        NatsConfig::new(server.url()).tls_ca_file(&other_ca).tls_client_cert(&client.cert, &client.key);
    assert_fails(connect(untrusted).await, "TLS certificate of NATS at nats://127.0.0.1", key_body);
    let web_roots_only = NatsConfig::new(server.url()).require_tls(true);
    assert_fails(connect(web_roots_only).await, "is not trusted", key_body);
}

#[tokio::test]
async fn require_tls_refuses_a_plain_server() {
    let server = PrivateServer::start("");
    let error = connect(NatsConfig::new(server.url()).require_tls(true)).await.err().expect("no TLS there");
    assert!(!error.is_retryable() && error.to_string().contains("TLS"), "{error}");
}

/// NATS JWTs made at test time: `base64url(header).base64url(claims).base64url(signature)`,
/// signed with the issuer's NKey, as `nsc` makes them.
mod jwt {
    use std::path::{Path, PathBuf};

    use super::*;

    fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let claims = serde_json::json!({
            "jti": uuid::Uuid::now_v7().simple().to_string().to_uppercase(),
            "iat": chrono::Utc::now().timestamp(),
            "iss": issuer.public_key(),
            "name": name,
            "sub": subject,
            "nats": nats,
        });
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = issuer.sign(signed.as_bytes()).unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    pub fn operator(operator: &KeyPair) -> String {
        encode(
            operator,
            &operator.public_key(),
            "test-operator",
            serde_json::json!({ "type": "operator", "version": 2 }),
        )
    }

    /// An account without limits, with JetStream or (for the system account) without.
    pub fn account(operator: &KeyPair, account: &KeyPair, jetstream: bool) -> String {
        let mut limits = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
            "conn": -1, "leaf": -1,
        });
        if jetstream {
            for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
                limits[key] = serde_json::json!(-1);
            }
        }
        let claims = serde_json::json!({ "limits": limits, "type": "account", "version": 2 });
        encode(operator, &account.public_key(), "test-account", claims)
    }

    /// Writes `dir/<name>.creds` for `user`, issued by `account`.
    pub fn write_creds(dir: &Path, name: &str, account: &KeyPair, user: &KeyPair) -> PathBuf {
        let claims = serde_json::json!({ "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2 });
        let jwt = encode(account, &user.public_key(), name, claims);
        let seed = user.seed().unwrap();
        let path = dir.join(format!("{name}.creds"));
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap();
        path
    }
}
