//! The `[bus.nats]` section: how the NATS connection authenticates and which TLS files it uses,
//! mapped onto [`NatsConfig`]. Every secret may be given inline or as a `*_file`.

use std::path::{Path, PathBuf};

use courier_core::wire::WireMode;
use courier_nats::NatsConfig;
use serde::Deserialize;

use crate::exit::UsageError;
use crate::secret::{self, Secret};

/// `[bus.nats]`; empty strings mean "not set" (see reference.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    pub user: String,
    pub password: Secret,
    pub password_file: PathBuf,
    pub token: Secret,
    pub token_file: PathBuf,
    pub nkey_seed: Secret,
    pub nkey_seed_file: PathBuf,
    pub credentials_file: PathBuf,
    pub require_tls: bool,
    pub tls_ca_file: PathBuf,
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
}

impl NatsSettings {
    /// The bus settings for `url` with these credentials and TLS files. At most one kind of
    /// credential may be set, since which one the server checks would be a guess.
    pub fn config(&self, url: &str, wire: WireMode) -> anyhow::Result<NatsConfig> {
        let password = secret::resolve("bus.nats.password", &self.password, &self.password_file)?;
        let token = secret::resolve("bus.nats.token", &self.token, &self.token_file)?;
        let seed = secret::resolve("bus.nats.nkey_seed", &self.nkey_seed, &self.nkey_seed_file)?;
        let creds = is_set(&self.credentials_file);
        let user = !self.user.is_empty() || password.is_some();
        let kinds = [user, token.is_some(), seed.is_some(), creds].into_iter().filter(|set| *set).count();
        anyhow::ensure!(
            kinds <= 1,
            "bus.nats: set one kind of credential: user and password, token, nkey_seed or credentials_file"
        );
        let mut config = NatsConfig::new(url).wire_mode(wire).require_tls(self.require_tls);
        if user {
            let password = password.filter(|_| !self.user.is_empty());
            let Some(password) = password else {
                anyhow::bail!("bus.nats.user and bus.nats.password (or password_file) go together; set both")
            };
            config = config.user_password(&self.user, password.expose());
        }
        if let Some(token) = token {
            config = config.token(token.expose());
        }
        if let Some(seed) = seed {
            config = config.nkey_seed(seed.expose());
        }
        if creds {
            config = config.credentials_file(&self.credentials_file);
        }
        if is_set(&self.tls_ca_file) {
            config = config.tls_ca_file(&self.tls_ca_file);
        }
        match (is_set(&self.tls_cert_file), is_set(&self.tls_key_file)) {
            (true, true) => config = config.tls_client_cert(&self.tls_cert_file, &self.tls_key_file),
            (false, false) => {}
            _ => anyhow::bail!("bus.nats.tls_cert_file and bus.nats.tls_key_file go together; set both"),
        }
        Ok(config)
    }
}

fn is_set(path: &Path) -> bool {
    !path.as_os_str().is_empty()
}

/// The bus settings for `url` of a command without a configuration file (demo, bench): `[bus.nats]`
/// from `COURIER_BUS__NATS__*` variables.
pub fn from_env(url: &str, wire: WireMode) -> anyhow::Result<NatsConfig> {
    let settings = crate::config::Config::load(None, std::env::vars())?.bus.nats;
    settings.config(url, wire).map_err(|e| UsageError(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> NatsSettings {
        let reference: toml::Table = crate::config::REFERENCE.parse().unwrap();
        let mut table = reference["bus"]["nats"].as_table().unwrap().clone();
        table.extend(toml.parse::<toml::Table>().unwrap());
        toml::Value::Table(table).try_into().unwrap()
    }

    fn shown(toml: &str) -> String {
        format!("{:?}", settings(toml).config("nats://127.0.0.1:4222", WireMode::default()).unwrap())
    }

    #[test]
    fn each_credential_reaches_the_config_without_being_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "pw-from-file\n").unwrap();
        let from_file = shown(&format!("user = \"app\"\npassword_file = {file:?}"));
        assert!(from_file.contains(r#"UserPassword { user: "app", password: *** }"#), "{from_file}");
        assert!(!from_file.contains("pw-from-file"), "{from_file}");
        assert!(shown("token = \"tok-x\"").contains("Token(***)"));
        assert!(shown("nkey_seed = \"SUseed\"").contains("NKeySeed(***)"));
        assert!(shown("credentials_file = \"/run/app.creds\"").contains(r#"File("/run/app.creds")"#));
        let tls = shown("tls_ca_file = \"ca.pem\"\ntls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"");
        assert!(tls.contains(r#"ca_file: Some("ca.pem"), client_cert: Some(("c.pem", "k.pem"))"#), "{tls}");
    }

    #[test]
    fn inconsistent_settings_are_refused_naming_the_keys() {
        for (toml, expected) in [
            ("token = \"t\"\nnkey_seed = \"s\"", "set one kind of credential"),
            ("user = \"app\"", "bus.nats.user and bus.nats.password"),
            ("password = \"pw-x\"", "bus.nats.user and bus.nats.password"),
            ("token = \"t\"\ntoken_file = \"/x\"", "both bus.nats.token and bus.nats.token_file"),
            ("tls_cert_file = \"c.pem\"", "tls_cert_file and bus.nats.tls_key_file"),
        ] {
            let error = settings(toml).config("nats://h:4222", WireMode::default()).unwrap_err();
            assert!(error.to_string().contains(expected), "{toml}: {error}");
            assert!(!error.to_string().contains("pw-x"), "{error}");
        }
    }
}
