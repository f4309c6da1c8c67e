//! The `[bus.kafka]` section: Courier's Kafka settings, and librdkafka properties passed through
//! as given (security, tuning), mapped to a [`KafkaConfig`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use courier_core::is_secret_setting;
use courier_core::wire::WireMode;
use courier_kafka::KafkaConfig;
use serde::Deserialize;

use crate::config::Config;
use crate::secret::{self, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// librdkafka's `message.timeout.ms`: it bounds each verdict, which the relay's lease checks.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    pub properties: Properties,
}

/// librdkafka properties as written in `[bus.kafka.properties]`. `Debug` shows secret values
/// (`sasl.password`, `ssl.key.pem`, …) as `***`.
#[derive(Clone, Default)]
pub struct Properties(BTreeMap<String, String>);

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.0.iter().map(|(k, v)| (k, if is_secret_setting(k) { "***" } else { v.as_str() }));
        f.debug_map().entries(shown).finish()
    }
}

impl<'de> Deserialize<'de> for Properties {
    /// Strings, numbers and booleans, all handed to librdkafka as text (`"linger.ms" = 5`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = BTreeMap::<String, toml::Value>::deserialize(d)?;
        let text = |(key, value): (String, toml::Value)| match value {
            toml::Value::String(s) => Ok((key, s)),
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                Ok((key, value.to_string()))
            }
            _ => Err(serde::de::Error::custom(format!(
                "librdkafka property `{key}` must be a string, number or boolean"
            ))),
        };
        table.into_iter().map(text).collect::<Result<_, _>>().map(Self)
    }
}

/// The suffix of a key whose value is a file holding a secret property's value.
const FILE_SUFFIX: &str = "_file";

impl KafkaSection {
    /// The bus settings for the brokers `servers`. Properties Courier owns are refused here,
    /// naming the key and the setting to use instead.
    pub fn config(&self, servers: &str, wire: WireMode) -> anyhow::Result<KafkaConfig> {
        let config = self.properties()?.into_iter().fold(
            KafkaConfig::new(servers).wire_mode(wire).delivery_timeout(self.delivery_timeout),
            |config, (name, value)| config.set(name, value),
        );
        config.validate().context("invalid [bus.kafka.properties]")?;
        Ok(config)
    }

    /// librdkafka properties by name. A key reads `_` as `.`, so that an environment variable
    /// can name one (`COURIER_BUS__KAFKA__PROPERTIES__SECURITY_PROTOCOL` sets
    /// `security.protocol`; no librdkafka property that takes text has `_` in its name). A key
    /// `<property>_file` names a file that holds the value of a secret property.
    fn properties(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let (mut inline, mut files) = (BTreeMap::new(), BTreeMap::new());
        for (key, value) in &self.properties.0 {
            match key.strip_suffix(FILE_SUFFIX) {
                Some(property) => drop(files.insert(property_name(property), value.as_str())),
                None => drop(inline.insert(property_name(key), Secret::from(value.clone()))),
            }
        }
        for (name, file) in files {
            anyhow::ensure!(
                is_secret_setting(&name),
                "[bus.kafka.properties] {name}{FILE_SUFFIX}: only secret properties (passwords, keys, \
                 tokens) are read from files; set {name} itself"
            );
            let inline_value = inline.remove(&name).unwrap_or_default();
            let key = format!("bus.kafka.properties.{name}");
            if let Some(value) = secret::resolve(&key, &inline_value, Path::new(file))? {
                inline.insert(name, value);
            }
        }
        Ok(inline.into_iter().map(|(name, value)| (name, value.expose().to_owned())).collect())
    }
}

/// The Kafka settings of commands without a configuration file (`demo`, `bench`) for the
/// brokers `servers`: `[bus.kafka]` as the `COURIER_BUS__KAFKA__…` variables set it, so that they
/// too reach a secured cluster.
pub fn from_env(servers: &str, wire: WireMode) -> anyhow::Result<KafkaConfig> {
    Config::load(None, std::env::vars())?.bus.kafka.config(servers, wire)
}

fn property_name(key: &str) -> String {
    key.replace('_', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(file: &str, env: &[(&str, &str)]) -> anyhow::Result<KafkaSection> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("courier.toml");
        std::fs::write(&path, file).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Ok(Config::load(Some(&path), env)?.bus.kafka)
    }

    #[test]
    fn environment_variables_name_dotted_properties_with_underscores() {
        let s = section(
            "[bus.kafka.properties]\n\"linger.ms\" = 5\n",
            &[
                ("COURIER_BUS__KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_SSL"),
                ("COURIER_BUS__KAFKA__PROPERTIES__SASL_MECHANISMS", "SCRAM-SHA-512"),
                ("COURIER_BUS__KAFKA__PROPERTIES__SASL_PASSWORD", "123"),
                ("COURIER_BUS__KAFKA__DELIVERY_TIMEOUT", "6s"),
            ],
        )
        .unwrap();
        let properties = s.properties().unwrap();
        assert_eq!(properties["security.protocol"], "SASL_SSL");
        assert_eq!(properties["sasl.mechanisms"], "SCRAM-SHA-512");
        assert_eq!(properties["sasl.password"], "123");
        assert_eq!(properties["linger.ms"], "5");
        assert_eq!(s.delivery_timeout, Duration::from_secs(6));
        assert!(!format!("{s:?}").contains("123"), "{s:?}");
    }

    #[test]
    fn a_secret_property_comes_from_a_file_and_only_from_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kafka-password");
        std::fs::write(&file, "from-file\n").unwrap();
        let file = file.to_str().unwrap();
        let s = section("", &[("COURIER_BUS__KAFKA__PROPERTIES__SASL_PASSWORD_FILE", file)]).unwrap();
        assert_eq!(s.properties().unwrap()["sasl.password"], "from-file");
        let s =
            section(&format!("[bus.kafka.properties]\n\"sasl.password_file\" = {file:?}\n"), &[]).unwrap();
        assert_eq!(s.properties().unwrap()["sasl.password"], "from-file");
        let s = section(
            &format!(
                "[bus.kafka.properties]\n\"sasl.password\" = \"inline\"\n\"sasl.password_file\" = {file:?}\n"
            ),
            &[],
        )
        .unwrap();
        let err = s.properties().unwrap_err().to_string();
        assert!(
            err.contains("both bus.kafka.properties.sasl.password and") && !err.contains("inline"),
            "{err}"
        );
        let s = section("[bus.kafka.properties]\n\"ssl.ca.location_file\" = \"/x\"\n", &[]).unwrap();
        assert!(s.properties().unwrap_err().to_string().contains("only secret properties"));
    }

    #[test]
    fn properties_courier_owns_are_refused_naming_the_setting_to_use() {
        let s = section("[bus.kafka.properties]\n\"message.timeout.ms\" = 300000\n", &[]).unwrap();
        let err = format!("{:#}", s.config("b:9092", WireMode::default()).unwrap_err());
        assert!(
            err.contains("`message.timeout.ms` cannot be set") && err.contains("bus.kafka.delivery_timeout"),
            "{err}"
        );
        let config = section("", &[]).unwrap().config("b:9092", WireMode::default()).unwrap();
        assert_eq!(config.get_bootstrap_servers(), "b:9092");
    }
}
