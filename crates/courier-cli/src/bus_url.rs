//! Bus URLs of the command line: `memory`, `nats://host:port`, `kafka://host:port[,host:port]`.

use std::fmt;
use std::str::FromStr;

/// Which broker a command talks to, parsed from `--bus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusUrl {
    Memory,
    Nats(String),
    Kafka(String),
}

impl FromStr for BusUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Shown with its password masked: a mistyped URL may still carry one.
        let shown = courier_core::redact_url(s);
        let nonempty = |rest: &str, scheme: &str| {
            if rest.is_empty() {
                Err(format!("bus URL {shown:?} lacks a host: expected {scheme}://host:port"))
            } else {
                Ok(rest.to_owned())
            }
        };
        match s.split_once("://") {
            None if s == "memory" => Ok(Self::Memory),
            Some(("nats", rest)) => Ok(Self::Nats(format!("nats://{}", nonempty(rest, "nats")?))),
            Some(("kafka", rest)) => Ok(Self::Kafka(nonempty(rest, "kafka")?)),
            _ => Err(format!(
                "unsupported bus URL {shown:?}: expected memory, nats://host:port or kafka://host:port[,host:port]"
            )),
        }
    }
}

impl fmt::Display for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Nats(url) => f.write_str(url),
            Self::Kafka(servers) => write!(f, "kafka://{servers}"),
        }
    }
}

/// Runs `$body` with `$bus` bound to a connected bus of the kind `$url` names. A macro rather
/// than a trait object: each backend's generic code is monomorphised, so the hot path stays
/// free of dynamic dispatch.
macro_rules! with_bus {
    ($url:expr, |$bus:ident| $body:expr) => {
        $crate::bus_url::with_bus!($url, courier_core::wire::WireMode::default(), |$bus| $body)
    };
    ($url:expr, $wire:expr, |$bus:ident| $body:expr) => {
        match $url {
            $crate::bus_url::BusUrl::Memory => {
                let $bus = courier_core::MemoryBus::default();
                $body
            }
            $crate::bus_url::BusUrl::Nats(url) => {
                let config = $crate::nats_settings::from_env(url.as_str(), $wire)?;
                let $bus = courier_nats::NatsBus::connect(config).await?;
                $body
            }
            $crate::bus_url::BusUrl::Kafka(servers) => {
                let config = $crate::kafka_settings::from_env(&servers, $wire)?;
                let $bus = courier_kafka::KafkaBus::connect(config)?;
                $body
            }
        }
    };
}
pub(crate) use with_bus;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_and_names_bad_ones() {
        assert_eq!("memory".parse(), Ok(BusUrl::Memory));
        assert_eq!("nats://127.0.0.1:4222".parse(), Ok(BusUrl::Nats("nats://127.0.0.1:4222".into())));
        assert_eq!("kafka://a:1,b:2".parse(), Ok(BusUrl::Kafka("a:1,b:2".into())));
        assert!("redis://x".parse::<BusUrl>().unwrap_err().contains("unsupported bus URL"));
        assert!("nats://".parse::<BusUrl>().unwrap_err().contains("lacks a host"));
        let mistyped = "natss://app:pw-not-shown@h:4222".parse::<BusUrl>().unwrap_err();
        assert!(
            mistyped.contains("\"natss://app:***@h:4222\"") && !mistyped.contains("pw-not-shown"),
            "{mistyped}"
        );
    }
}
