//! URLs as they may be shown: in logs, errors, readiness bodies and printed summaries, where a
//! password must never appear.

/// `url` with the password of its user info replaced by `***` (`postgres://app:***@db/app`).
/// Query parameters that carry secrets are masked as well (`password=`, `sslpassword=`).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    // The authority ends at the first '/', '?' or '#'; a password may hold any of '@', ':'.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = redact_query(tail);
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

/// Masks the values of secret-bearing query parameters.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else { return tail.to_owned() };
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_setting(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", masked.join("&"))
}

/// Whether a setting or query parameter named `name` holds a secret (a password, token, secret
/// or private key, e.g. librdkafka's `sasl.password` or `ssl.key.pem`), so that its value must
/// not be shown.
pub fn is_secret_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "token", "secret", "key.pem", "credentials", "jaas"].iter().any(|s| name.contains(s))
}

#[cfg(test)]
mod tests {
    use super::{is_secret_setting, redact_url};

    #[test]
    fn secret_settings_are_recognised() {
        for name in
            ["sasl.password", "ssl.key.password", "ssl.key.pem", "sasl.oauthbearer.client.secret", "Token"]
        {
            assert!(is_secret_setting(name), "{name}");
        }
        for name in ["bootstrap.servers", "security.protocol", "sasl.username", "ssl.ca.location"] {
            assert!(!is_secret_setting(name), "{name}");
        }
    }

    #[test]
    fn passwords_are_masked_and_the_rest_is_kept() {
        for (url, shown) in [
            ("postgres://app:s3cret@db:5432/app", "postgres://app:***@db:5432/app"),
            (
                "mysql://root:p%40ss@127.0.0.1/test?ssl-mode=required",
                "mysql://root:***@127.0.0.1/test?ssl-mode=required",
            ),
            ("nats://u:p@a:4222,b:4222", "nats://u:***@a:4222,b:4222"),
            ("postgres://app:we@ird:pw@db/app", "postgres://app:***@db/app"),
            ("postgres://db/app?user=app&password=s3cret", "postgres://db/app?user=app&password=***"),
            ("postgres://app@db/app", "postgres://app@db/app"),
            ("sqlite://outbox.db", "sqlite://outbox.db"),
            ("memory", "memory"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
