//! How the relay provisions its topics: `[topics.defaults]` for every topic of
//! `topics.provision`, overridden per topic by `[topics.settings]`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use courier_core::{Topic, TopicConfig};
use serde::Deserialize;

/// The settings of every provisioned topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDefaults {
    pub partitions: u32,
    pub replicas: u32,
    pub max_age: MaxAge,
    /// 0: unlimited.
    pub max_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
}

/// One topic's departures from [`TopicDefaults`]; a key left out keeps the default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicOverrides {
    partitions: Option<u32>,
    replicas: Option<u32>,
    max_age: Option<MaxAge>,
    max_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    duplicate_window: Option<Duration>,
}

/// A retention age written as a duration (`"7d"`), or `""` to keep events forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge(Option<Duration>);

impl<'de> Deserialize<'de> for MaxAge {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(Self(None));
        }
        humantime::parse_duration(&text).map(|age| Self(Some(age))).map_err(serde::de::Error::custom)
    }
}

/// The provisioning settings of each topic in `names`. A `settings` entry for a topic that is
/// not provisioned is refused, as it is most likely a misspelt name.
pub fn topic_configs(
    names: &[String],
    defaults: &TopicDefaults,
    settings: &BTreeMap<String, TopicOverrides>,
) -> anyhow::Result<Vec<TopicConfig>> {
    if let Some(stray) = settings.keys().find(|name| !names.contains(name)) {
        anyhow::bail!("topics.settings has an entry for {stray:?}, which topics.provision does not list");
    }
    let configs = names.iter().map(|name| {
        let topic = Topic::new(name.as_str())
            .with_context(|| format!("invalid topic {name:?} in configuration key `topics.provision`"))?;
        let own = settings.get(name).cloned().unwrap_or_default();
        Ok(TopicConfig::new(topic)
            .partitions(own.partitions.unwrap_or(defaults.partitions))
            .replicas(own.replicas.unwrap_or(defaults.replicas))
            .max_age(own.max_age.unwrap_or(defaults.max_age).0)
            .max_bytes(Some(own.max_bytes.unwrap_or(defaults.max_bytes)).filter(|&bytes| bytes > 0))
            .duplicate_window(own.duplicate_window.unwrap_or(defaults.duplicate_window)))
    });
    configs.collect()
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(file: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("courier.toml");
        std::fs::write(&path, file).unwrap();
        Config::load(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn topics_take_the_defaults_and_their_own_settings() {
        let config = load(
            "[topics]\nprovision = [\"orders\", \"audit\"]\n\
             [topics.settings]\norders = { partitions = 6, max_age = \"7d\", max_bytes = 1000 }\n",
            &[("COURIER_TOPICS__DEFAULTS__REPLICAS", "3")],
        )
        .unwrap();
        let topics = config.provisioned_topics().unwrap();
        let (orders, audit) = (&topics[0], &topics[1]);
        assert_eq!(orders.get_topic().as_str(), "orders");
        assert_eq!((orders.get_partitions(), orders.get_replicas()), (6, 3));
        assert_eq!(orders.get_max_age(), Some(std::time::Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(orders.get_max_bytes(), Some(1000));
        assert_eq!((audit.get_partitions(), audit.get_replicas()), (1, 3), "defaults");
        assert_eq!((audit.get_max_age(), audit.get_max_bytes()), (None, None), "kept forever, unlimited");
        assert_eq!(audit.get_duplicate_window(), std::time::Duration::from_secs(120));
    }

    #[test]
    fn bad_settings_are_refused_naming_them() {
        let stray =
            load("[topics]\nprovision = [\"orders\"]\n[topics.settings]\norder = { partitions = 2 }\n", &[]);
        let err = stray.unwrap().provisioned_topics().unwrap_err().to_string();
        assert!(err.contains("entry for \"order\", which topics.provision does not list"), "{err}");
        let unknown = load("[topics.settings]\norders = { partitons = 2 }\n", &[]).unwrap_err().to_string();
        assert!(unknown.contains("partitons"), "{unknown}");
        let age = load("[topics.defaults]\nmax_age = \"a week\"\n", &[]).unwrap_err().to_string();
        assert!(age.contains("topics.defaults.max_age"), "{age}");
    }
}
