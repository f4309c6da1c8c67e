//! The outbox over TLS, against real servers: the shared PostgreSQL (which serves TLS) and
//! private PostgreSQL and MariaDB servers whose CA and certificates are made at test time
//! (`courier_conformance::private_db`). Each private server requires TLS and knows one password
//! account and one client-certificate account.

mod common;

use courier_conformance::private_db::{PrivateDb, CERT_USER, PASSWORD, PASSWORD_USER};
use courier_conformance::tls_certs::TestCa;
use courier_outbox::{Enqueue, Outbox, Store};

/// Connects to `url`, creates the tables, enqueues three events and reads them back as pending.
async fn round_trip(url: &str) {
    let store = Store::connect(url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    store.migrate().await.unwrap();
    assert!(!format!("{store:?}").contains(PASSWORD), "the store's Debug shows the password");
    let topic = common::topic();
    let events: Vec<_> = (0..3).map(|seq| common::event("tls-aggregate", seq)).collect();
    let items: Vec<Enqueue<'_>> = events.iter().map(|e| Enqueue::new(e).topic(&topic)).collect();
    let ids = store.enqueue(&Outbox::default(), &items).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(store.stats().await.unwrap().pending, 3);
    store.close().await;
}

/// The error of connecting to `url`, which must fail.
async fn connect_error(url: &str) -> String {
    match Store::connect(url).await {
        Ok(_) => panic!("connecting to {url} should have failed"),
        Err(error) => error.to_string(),
    }
}

/// A CA certificate the server's certificate was not signed by, in the server's directory.
fn other_ca(server: &PrivateDb) -> String {
    let path = TestCa::new("Some other CA").write_cert(&server.dir().join("other-ca.crt"));
    path.display().to_string()
}

#[tokio::test]
async fn postgres_sslmode_require_on_the_shared_server() {
    let (db, _) = common::TestDb::create(common::Kind::Postgres).await;
    let url = format!("{}?sslmode=require", db.url);
    round_trip(&url).await;
    // The session really is encrypted.
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(ssl, "sslmode=require made a connection without TLS");
}

#[tokio::test]
async fn postgres_verify_full_with_a_custom_ca() {
    let server = PrivateDb::postgres();
    let query = format!("sslmode=verify-full&sslrootcert={}", server.ca_file().display());
    round_trip(&server.url(PASSWORD_USER, Some(PASSWORD), &query)).await;
}

#[tokio::test]
async fn postgres_verify_full_with_the_wrong_ca_fails_naming_certificate_verification() {
    let server = PrivateDb::postgres();
    let query = format!("sslmode=verify-full&sslrootcert={}", other_ca(&server));
    let error = connect_error(&server.url(PASSWORD_USER, Some(PASSWORD), &query)).await;
    assert!(error.contains("certificate verification failed"), "{error}");
}

#[tokio::test]
async fn postgres_client_certificate_authenticates() {
    let server = PrivateDb::postgres();
    let cert = server.client_cert();
    let query = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        server.ca_file().display(),
        cert.cert.display(),
        cert.key.display()
    );
    round_trip(&server.url(CERT_USER, None, &query)).await;
}

#[tokio::test]
async fn postgres_wrong_password_fails_naming_authentication_without_the_password() {
    let server = PrivateDb::postgres();
    let secret = "s3cr3t-Pa55-xyz";
    let query = format!("sslmode=verify-full&sslrootcert={}", server.ca_file().display());
    let error = connect_error(&server.url(PASSWORD_USER, Some(secret), &query)).await;
    assert!(error.contains("authentication failed"), "{error}");
    assert!(!error.contains(secret), "the password leaked into the error: {error}");
}

#[tokio::test]
async fn postgres_refuses_a_connection_without_tls() {
    let server = PrivateDb::postgres();
    let error = connect_error(&server.url(PASSWORD_USER, Some(PASSWORD), "sslmode=disable")).await;
    assert!(error.contains("no encryption"), "{error}");
}

#[tokio::test]
async fn mariadb_verify_identity_with_a_custom_ca() {
    let server = PrivateDb::mariadb();
    let query = format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", server.ca_file().display());
    round_trip(&server.url(PASSWORD_USER, Some(PASSWORD), &query)).await;
}

#[tokio::test]
async fn mariadb_verify_identity_with_the_wrong_ca_fails_naming_certificate_verification() {
    let server = PrivateDb::mariadb();
    let query = format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", other_ca(&server));
    let error = connect_error(&server.url(PASSWORD_USER, Some(PASSWORD), &query)).await;
    assert!(error.contains("certificate verification failed"), "{error}");
}

#[tokio::test]
async fn mariadb_x509_account_authenticates_with_a_client_certificate() {
    let server = PrivateDb::mariadb();
    let cert = server.client_cert();
    let query = format!(
        "ssl-mode=VERIFY_IDENTITY&ssl-ca={}&ssl-cert={}&ssl-key={}",
        server.ca_file().display(),
        cert.cert.display(),
        cert.key.display()
    );
    round_trip(&server.url(CERT_USER, None, &query)).await;
    // Without the certificate the same account is refused.
    let query = format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", server.ca_file().display());
    let error = connect_error(&server.url(CERT_USER, None, &query)).await;
    assert!(error.contains("authentication failed"), "{error}");
}
