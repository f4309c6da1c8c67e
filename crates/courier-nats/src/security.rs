//! Credentials and TLS of the connection: what [`NatsConfig`] says becomes async-nats
//! [`ConnectOptions`], credentials in the URL included, and a failed connection becomes an error
//! that names the problem (a refused credential, an untrusted certificate) without the secret.

use std::path::PathBuf;

use async_nats::{ConnectError, ConnectErrorKind, ConnectOptions};
use courier_core::{Error, ErrorKind};

use crate::config::NatsConfig;

/// How the client proves who it is (besides a TLS client certificate, which combines with any).
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// No credentials: the server must allow anonymous clients.
    #[default]
    None,
    /// User name and password (`authorization { user, password }` or a `users` list).
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// An authorization token.
    Token(String),
    /// The seed (`SU…`) of a user NKey; the client signs the server's nonce with it.
    NKeySeed(String),
    /// A `.creds` file: the user's JWT and NKey seed (decentralized JWT authentication).
    File(PathBuf),
}

/// Names the kind of credential and shows nothing secret: a logged config never carries one.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword {{ user: {user:?}, password: *** }}"),
            Self::Token(_) => f.write_str("Token(***)"),
            Self::NKeySeed(_) => f.write_str("NKeySeed(***)"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// TLS settings; a CA file or client certificate makes the client require TLS too.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tls {
    pub(crate) required: bool,
    pub(crate) ca_file: Option<PathBuf>,
    /// Certificate and private key files (PEM) presented to servers that verify clients.
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
}

/// `url` (one server or a comma-separated list) with credentials masked: `user:***@` for a
/// password, `***@` for a token (`nats://token@host`), each server on its own.
pub(crate) fn redact(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let shown = courier_core::redact_url(server);
            let (scheme, rest) = shown.split_once("://").unwrap_or(("", &shown));
            match rest.split_once('@') {
                Some((user_info, host)) if !user_info.contains(':') => {
                    let scheme = if scheme.is_empty() { String::new() } else { format!("{scheme}://") };
                    format!("{scheme}***@{host}")
                }
                _ => shown,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits the credentials off `url`: async-nats does not use a URL's user info, and would log
/// the URL with it. Returns the servers without user info and what the URL carried
/// (`user:password@` or `token@`), the same in every server that has any.
pub(crate) fn split_url(url: &str) -> Result<(String, Credentials), Error> {
    let mut found = Credentials::None;
    let mut servers = Vec::new();
    for server in url.split(',').map(str::trim) {
        if !server.contains('@') {
            servers.push(server.to_owned());
            continue;
        }
        let invalid = || {
            Error::new(ErrorKind::Config, format!("NATS server URL {} is not a valid URL", redact(server)))
        };
        let full = if server.contains("://") { server.to_owned() } else { format!("nats://{server}") };
        let mut parsed = url::Url::parse(&full).map_err(|_| invalid())?;
        let decode = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned();
        let credentials = match parsed.password() {
            Some(password) => {
                Credentials::UserPassword { user: decode(parsed.username()), password: decode(password) }
            }
            None => Credentials::Token(decode(parsed.username())),
        };
        if found != Credentials::None && found != credentials {
            return Err(Error::new(
                ErrorKind::Config,
                format!("the NATS server URLs {} carry different credentials; use one set", redact(url)),
            ));
        }
        found = credentials;
        parsed.set_username("").and_then(|()| parsed.set_password(None)).map_err(|()| invalid())?;
        servers.push(parsed.to_string());
    }
    Ok((servers.join(","), found))
}

/// The async-nats options for `config`'s credentials (from its setters or its URL) and TLS
/// settings, and the server list to connect to, without user info.
pub(crate) async fn connect_options(config: &NatsConfig) -> Result<(ConnectOptions, String), Error> {
    let (servers, in_url) = split_url(&config.url)?;
    let credentials = match (&config.credentials, in_url) {
        (Credentials::None, in_url) => in_url,
        (set, Credentials::None) => set.clone(),
        _ => {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the NATS URL {} carries credentials and {:?} is set too; set one of them",
                    redact(&config.url),
                    config.credentials
                ),
            ))
        }
    };
    let mut options = ConnectOptions::new();
    options = match credentials {
        Credentials::None => options,
        Credentials::UserPassword { user, password } => options.user_and_password(user, password),
        Credentials::Token(token) => options.token(token),
        Credentials::NKeySeed(seed) => options.nkey(seed),
        Credentials::File(path) => options.credentials_file(&path).await.map_err(|err| {
            // The error names the file and what is wrong with it, never its content.
            Error::with_source(ErrorKind::Config, format!("NATS credentials file {}", path.display()), err)
        })?,
    };
    let tls = &config.tls;
    if let Some(ca) = &tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &tls.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let required = tls.required || tls.ca_file.is_some() || tls.client_cert.is_some();
    Ok((options.require_tls(required), servers))
}

/// The Courier error of a failed connection to `config`'s servers. Refused credentials and TLS
/// failures are [`ErrorKind::Config`] (retrying cannot fix them) and say so in an operator's words;
/// an unreachable server stays a retryable [`ErrorKind::Connection`].
pub(crate) fn connect_error(config: &NatsConfig, err: ConnectError) -> Error {
    let at = format!("NATS at {}", redact(&config.url));
    let refused = match err.kind() {
        ConnectErrorKind::AuthorizationViolation => Some(format!(
            "{at} refused the credentials (authorization violation): check the user and password, token, \
             NKey seed or credentials file"
        )),
        ConnectErrorKind::Authentication => {
            Some(format!("cannot authenticate to {at}: the NKey seed or credentials file could not sign the server's nonce"))
        }
        ConnectErrorKind::Tls => Some(format!("TLS setup for {at} failed (CA, certificate or key file)")),
        ConnectErrorKind::ServerParse => Some(format!("{at}: invalid server URL")),
        _ => rustls_error(&err).map(|tls| match tls {
            rustls::Error::InvalidCertificate(_) => {
                format!("the TLS certificate of {at} is not trusted (check the CA file)")
            }
            rustls::Error::AlertReceived(_) => format!(
                "{at} refused the TLS handshake (does it require a client certificate this client lacks or it does not trust?)"
            ),
            _ => format!("the TLS handshake with {at} failed"),
        }),
    };
    match refused {
        Some(problem) => Error::with_source(ErrorKind::Config, problem, err),
        None => Error::with_source(ErrorKind::Connection, format!("connecting to {at}"), err),
    }
}

/// The rustls error in `err`'s chain: async-nats reports a failed handshake as an I/O error
/// holding it, which on its own reads like a network fault worth retrying.
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(cause) = next {
        let inner = cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if let Some(tls) = cause.downcast_ref::<rustls::Error>().or_else(|| inner?.downcast_ref()) {
            return Some(tls);
        }
        next = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(user: &str, password: &str) -> Credentials {
        Credentials::UserPassword { user: user.into(), password: password.into() }
    }

    #[test]
    fn url_credentials_are_split_off_and_decoded() {
        for (url, servers, credentials) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222", Credentials::None),
            ("nats://app:p%40ss:w@127.0.0.1:4222", "nats://127.0.0.1:4222", user("app", "p@ss:w")),
            ("tls://s3cret@h:4222", "tls://h:4222", Credentials::Token("s3cret".into())),
            ("u:p@a:1, nats://u:p@b:2,c:3", "nats://a:1,nats://b:2,c:3", user("u", "p")),
        ] {
            assert_eq!(split_url(url).unwrap(), (servers.to_owned(), credentials), "{url}");
        }
    }

    #[test]
    fn different_credentials_in_one_server_list_are_refused_without_showing_them() {
        let error = split_url("nats://u:pw-one@a:1,nats://u:pw-two@b:2").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(!error.to_string().contains("pw-"), "{error}");
    }

    #[test]
    fn redaction_masks_passwords_and_tokens_of_every_server() {
        assert_eq!(
            redact("nats://u:pw@a:1,nats://tok@b:2,c:3,tok@d:4"),
            "nats://u:***@a:1,nats://***@b:2,c:3,***@d:4"
        );
    }

    #[test]
    fn debug_names_the_credential_without_its_secret() {
        let shown = format!(
            "{:?} {:?} {:?} {:?}",
            user("app", "pw-x"),
            Credentials::Token("tok-x".into()),
            Credentials::NKeySeed("SUseed-x".into()),
            Credentials::File("/run/app.creds".into())
        );
        assert_eq!(
            shown,
            r#"UserPassword { user: "app", password: *** } Token(***) NKeySeed(***) File("/run/app.creds")"#
        );
    }
}
