//! The relay's configuration: a TOML file whose every key can be overridden by a `COURIER_…`
//! environment variable. Unknown keys and bad values are refused naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use courier_core::wire::WireMode;
use serde::Deserialize;

use crate::bus_url::BusUrl;
use crate::kafka_settings::KafkaSection;
use crate::secret::{self, Secret};
use crate::topic_settings::{self, TopicDefaults, TopicOverrides};

/// Where a service command's configuration comes from: defaults, then --config, then COURIER_*
/// variables, then these flags.
#[derive(clap::Args)]
pub struct ServiceArgs {
    /// TOML configuration file (every key is documented in reference.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Database URL (overrides database.url).
    #[arg(long, global = true)]
    db: Option<String>,
}

impl ServiceArgs {
    /// The configuration these flags, the file and the environment describe.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(db) = &self.db {
            config.database.url = db.clone();
        }
        Ok(config)
    }
}

/// Every key with its default, documented; also the base that a config file is layered onto.
pub const REFERENCE: &str = include_str!("../config/reference.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: Database,
    pub bus: BusSection,
    pub relay: Relay,
    pub topics: Topics,
    pub http: Http,
    pub log: Log,
    /// `COURIER_*` variables that are not overrides (no `__`), e.g. injected by Kubernetes.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub url: String,
    /// Set into `url`'s user info at connect time, so the URL itself can be shown and logged.
    pub password: Secret,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSection {
    /// `None` until named: the relay refuses to guess a bus, since the memory bus would mark
    /// rows published while their events vanish with the process.
    #[serde(deserialize_with = "parse_optional")]
    pub url: Option<BusUrl>,
    pub wire: WireMode,
    pub kafka: KafkaSection,
    pub nats: crate::nats_settings::NatsSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    pub batch_size: usize,
    pub max_in_flight: usize,
    pub partitions: u32,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub busy_poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub provision: Vec<String>,
    pub defaults: TopicDefaults,
    pub settings: BTreeMap<String, TopicOverrides>,
    pub prefix: String,
    pub map: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub listen: SocketAddr,
    /// Allows the dashboard's changes (requeue, discard) to requests carrying it as a bearer
    /// token; without one the dashboard is read-only.
    pub admin_token: Secret,
    pub admin_token_file: PathBuf,
    /// Who the token's changes are logged as.
    pub admin_token_name: String,
}

impl Http {
    /// The admin token, from `admin_token` or `admin_token_file`; `None` when neither is set.
    pub fn admin_token(&self) -> anyhow::Result<Option<crate::dashboard::AdminToken>> {
        let secret = secret::resolve("http.admin_token", &self.admin_token, &self.admin_token_file)?;
        anyhow::ensure!(
            secret.is_none() || !self.admin_token_name.is_empty(),
            "http.admin_token_name is empty: name the token, so that its changes are logged under that name"
        );
        Ok(secret.map(|secret| crate::dashboard::AdminToken { name: self.admin_token_name.clone(), secret }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

/// A value parsed from a string, where the empty string means "not set".
fn parse_optional<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

impl Config {
    /// The reference defaults, overlaid with `file` (if any), then with `COURIER_…` variables
    /// from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut merged: toml::Table = REFERENCE.parse().expect("reference.toml is valid TOML");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let overlay: toml::Table =
                text.parse().with_context(|| format!("config file {} is not valid TOML", path.display()))?;
            merge(&mut merged, overlay, "")?;
        }
        let (from_env, ignored_env) = apply_env(&mut merged, env)?;
        let origin = file.map_or_else(|| "the defaults".to_owned(), |p| p.display().to_string());
        let mut config: Self = serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            let key = e.path().to_string();
            let origin = match from_env.get(&key) {
                Some(variable) => format!("environment variable {variable}"),
                None => origin,
            };
            anyhow::anyhow!("invalid configuration in {origin}: key `{key}`: {}", e.inner().message())
        })?;
        config.ignored_env = ignored_env;
        Ok(config)
    }
}

/// Overlays `overlay` onto `base`, refusing keys the reference does not have (except under
/// free-form tables such as `topics.map`).
fn merge(base: &mut toml::Table, overlay: toml::Table, prefix: &str) -> anyhow::Result<()> {
    for (key, value) in overlay {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value))
                if !FREE_FORM.contains(&path.as_str()) =>
            {
                merge(inner, value, &path)?
            }
            (Some(slot), value) => *slot = value,
            (None, _) => anyhow::bail!(
                "unknown configuration key `{path}` (every key is listed with its default in reference.toml)"
            ),
        }
    }
    Ok(())
}

/// `text` percent-encoded for a URL's user info. `url` leaves `%` as it is (it takes it for an
/// escape), while the database drivers decode it, so everything but letters and digits is encoded.
fn encoded(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Tables whose keys are the user's (aggregate types, topics, librdkafka properties), not
/// Courier's: any key may be set in them.
const FREE_FORM: &[&str] = &["topics.map", "topics.settings", "bus.kafka.properties"];

/// The separator of environment overrides: `COURIER_RELAY__BATCH_SIZE` sets `relay.batch_size`.
/// A single underscore could not tell Courier's settings from the variables Kubernetes injects
/// for a Service named `courier` (`COURIER_PORT`, `COURIER_SERVICE_HOST`, …) or, for one named
/// `courier-relay`, `COURIER_RELAY_PORT`, which would look like an unknown `relay` key.
const ENV_SEPARATOR: &str = "__";

/// Applies `COURIER_<SECTION>__<KEY>` variables (`COURIER_TOPICS__MAP__<AGGREGATE_TYPE>` for a
/// `topics.map` entry, in lower case); values parse as TOML values (numbers, booleans, arrays)
/// and fall back to plain strings. Returns the key each variable set, by key, and the other
/// `COURIER_*` variables, which are not Courier's settings and are ignored.
fn apply_env(
    config: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<(BTreeMap<String, String>, Vec<String>)> {
    let (mut applied, mut ignored) = (BTreeMap::new(), Vec::new());
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("COURIER_") else { continue };
        if !rest.contains(ENV_SEPARATOR) {
            ignored.push(name);
            continue;
        }
        let path: Vec<String> = rest.to_ascii_lowercase().split(ENV_SEPARATOR).map(str::to_owned).collect();
        let key = path.join(".");
        let Some(table) = parent_table(config, &path) else {
            anyhow::bail!(
                "unknown environment override {name}: `{key}` is not a configuration key (every key is listed \
                 in reference.toml; overrides are COURIER_<SECTION>__<KEY>, COURIER_<SECTION>__<TABLE>__<KEY> \
                 for nested tables)"
            );
        };
        let last = path.last().expect("parent_table found one part at least").clone();
        // A string key takes the text as it is: a password `123` or `true` must stay a string.
        let value = match table.get(&last) {
            Some(toml::Value::String(_)) | None => toml::Value::String(raw),
            Some(_) => format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .filter(|v| !v.is_table())
                .unwrap_or(toml::Value::String(raw)),
        };
        table.insert(last, value);
        applied.insert(key, name);
    }
    Ok((applied, ignored))
}

/// The table that holds the value at `path`, if `path` names a configuration value: each table on
/// the way must exist, and so must the value, unless its table is free-form.
fn parent_table<'a>(config: &'a mut toml::Table, path: &[String]) -> Option<&'a mut toml::Table> {
    let (last, parents) = path.split_last()?;
    let free_form = FREE_FORM.contains(&parents.join(".").as_str());
    let mut table = config;
    for part in parents {
        table = table.get_mut(part)?.as_table_mut()?;
    }
    (free_form || table.get(last).is_some_and(|value| !value.is_table())).then_some(table)
}

impl Config {
    /// The outbox store of `database.url`, with its tables created or upgraded.
    pub async fn connect_store(&self) -> anyhow::Result<courier_outbox::Store> {
        let shown = courier_core::redact_url(&self.database.url);
        let store = courier_outbox::Store::connect(&self.database_url()?)
            .await
            .with_context(|| format!("connecting to {shown}"))?;
        store.migrate().await.with_context(|| format!("migrating the outbox tables in {shown}"))?;
        Ok(store)
    }

    /// `database.url`, with the password of `database.password` or `database.password_file` set in
    /// its user info (percent-encoded, so any character may appear in it).
    fn database_url(&self) -> anyhow::Result<String> {
        let database = &self.database;
        let Some(password) =
            secret::resolve("database.password", &database.password, &database.password_file)?
        else {
            return Ok(database.url.clone());
        };
        let shown = courier_core::redact_url(&database.url);
        let mut url =
            url::Url::parse(&database.url).with_context(|| format!("database.url {shown} is not a URL"))?;
        anyhow::ensure!(
            url.password().is_none(),
            "database.url {shown} has a password and database.password is set too; set one of them"
        );
        anyhow::ensure!(
            !url.username().is_empty() && url.set_password(Some(&encoded(password.expose()))).is_ok(),
            "database.password needs a user name and host in database.url ({shown})"
        );
        Ok(url.into())
    }

    /// The relay settings this configuration describes.
    pub fn relay_config(&self) -> courier_outbox::RelayConfig {
        let r = &self.relay;
        courier_outbox::RelayConfig::default()
            .batch_size(r.batch_size)
            .max_in_flight(r.max_in_flight)
            .partitions(r.partitions)
            .max_attempts(r.max_attempts)
            .backoff(courier_core::Backoff::default().initial(r.backoff_initial).max(r.backoff_max))
            .lease_ttl(r.lease_ttl)
            .poll_interval(r.poll_interval)
            .busy_poll_interval(r.busy_poll_interval)
            .idle_after(r.idle_after)
            .retention(Some(r.retention))
            .drain_timeout(r.drain_timeout)
    }

    /// Maps aggregate types to topics for `courier outbox enqueue`.
    pub fn topic_mapper(&self) -> anyhow::Result<courier_outbox::TopicMapper> {
        let mut mapper = courier_outbox::TopicMapper::new().prefix(self.topics.prefix.clone());
        for (aggregate_type, topic) in &self.topics.map {
            let topic = courier_core::Topic::new(topic.as_str()).with_context(|| {
                format!("invalid topic in configuration key `topics.map.{aggregate_type}`")
            })?;
            mapper = mapper.map(aggregate_type.clone(), topic);
        }
        Ok(mapper)
    }

    /// The topics to provision at relay start, with their settings.
    pub fn provisioned_topics(&self) -> anyhow::Result<Vec<courier_core::TopicConfig>> {
        let topics = &self.topics;
        topic_settings::topic_configs(&topics.provision, &topics.defaults, &topics.settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("courier.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn reference_parses_with_documented_defaults() {
        let c = Config::load(None, []).unwrap();
        assert_eq!(c.bus.url, None, "no bus until one is named");
        assert_eq!(c.http.listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(c.relay.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.bus.wire, WireMode::CloudEvents);
        assert_eq!(c.log.format, LogFormat::Human);
    }

    #[test]
    fn file_and_env_override_the_defaults() {
        let c = load_str(
            "[relay]\nbatch_size = 50\n[topics.map]\norder = \"orders.v1\"\n",
            &[
                ("COURIER_DATABASE__URL", "postgres://x@h/db"),
                ("COURIER_RELAY__MAX_ATTEMPTS", "3"),
                ("COURIER_TOPICS__MAP__PAYMENT", "payments.v2"),
                ("COURIER_TOPICS__PROVISION", r#"["orders.v1", "payments.v2"]"#),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(c.relay.batch_size, 50);
        assert_eq!(c.relay.max_attempts, 3);
        assert_eq!(c.database.url, "postgres://x@h/db");
        assert_eq!(c.topics.map["order"], "orders.v1");
        assert_eq!(c.topics.map["payment"], "payments.v2");
        assert_eq!(c.topics.provision, ["orders.v1", "payments.v2"]);
    }

    /// Kubernetes injects these for a Service named `courier` (or `courier-relay`) in the same
    /// namespace; the relay must start next to one.
    #[test]
    fn variables_injected_by_kubernetes_are_ignored() {
        let injected = [
            ("COURIER_PORT", "tcp://10.0.0.7:9464"),
            ("COURIER_PORT_9464_TCP_ADDR", "10.0.0.7"),
            ("COURIER_SERVICE_HOST", "10.0.0.7"),
            ("COURIER_RELAY_PORT", "tcp://10.0.0.8:9464"),
            ("COURIER_RELAY_SERVICE_PORT", "9464"),
            ("COURIER_LOG_DIR", "/tmp/courier-services"),
        ];
        let c = load_str("", &injected).unwrap();
        assert_eq!(c.ignored_env.len(), injected.len());
        assert_eq!(c.relay.batch_size, 1000);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = load_str("[relay]\nbatch_sise = 5\n", &[]).unwrap_err().to_string();
        assert!(err.contains("unknown configuration key `relay.batch_sise`"), "{err}");
        let err = load_str("[relay]\nlease_ttl = \"soon\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("lease_ttl"), "{err}");
        let err = load_str("[bus]\nurl = \"redis://x\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("unsupported bus URL"), "{err}");
        let err = load_str("", &[("COURIER_RELAY__BOGUS", "1")]).unwrap_err().to_string();
        assert!(err.contains("unknown environment override COURIER_RELAY__BOGUS: `relay.bogus`"), "{err}");
        let err = load_str("", &[("COURIER_RELAY__BATCH_SIZE", "many")]).unwrap_err().to_string();
        assert!(
            err.contains("in environment variable COURIER_RELAY__BATCH_SIZE: key `relay.batch_size`"),
            "{err}"
        );
        let err = load_str("[http]\nlisten = \"nowhere\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
        for (variable, key) in
            [("COURIER_TOPICS__MAP", "topics.map"), ("COURIER_RELAY__BATCH_SIZE__X", "relay.batch_size.x")]
        {
            let err = load_str("", &[(variable, "1")]).unwrap_err().to_string();
            assert!(err.contains(&format!("unknown environment override {variable}: `{key}`")), "{err}");
        }
    }

    #[test]
    fn string_keys_take_environment_text_as_it_is() {
        let c =
            load_str("", &[("COURIER_DATABASE__PASSWORD", "123"), ("COURIER_TOPICS__MAP__ORDER", "true")])
                .unwrap();
        assert_eq!(c.database.password.expose(), "123");
        assert_eq!(c.topics.map["order"], "true");
    }

    #[test]
    fn the_database_password_is_set_into_the_url_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db-password");
        std::fs::write(&file, "p@ss:w/rd%\n").unwrap();
        let file = file.to_str().unwrap();
        let c =
            load_str("", &[("COURIER_DATABASE__URL", "postgres://app@db:5432/app?sslmode=require")]).unwrap();
        assert_eq!(
            c.database_url().unwrap(),
            "postgres://app@db:5432/app?sslmode=require",
            "no password set"
        );
        let c = load_str(
            "[database]\nurl = \"postgres://app@db:5432/app?sslmode=require\"\n",
            &[("COURIER_DATABASE__PASSWORD_FILE", file)],
        )
        .unwrap();
        assert_eq!(
            c.database_url().unwrap(),
            "postgres://app:p%40ss%3Aw%2Frd%25@db:5432/app?sslmode=require"
        );
        let c = load_str("[database]\nurl = \"mysql://app:old@db/app\"\npassword = \"new\"\n", &[]).unwrap();
        let err = c.database_url().unwrap_err().to_string();
        assert_eq!(
            err,
            "database.url mysql://app:***@db/app has a password and database.password is set too; set one of them"
        );
        let c = load_str("[database]\nurl = \"postgres://db/app\"\npassword = \"pw\"\n", &[]).unwrap();
        assert!(c.database_url().unwrap_err().to_string().contains("needs a user name"));
    }
}
