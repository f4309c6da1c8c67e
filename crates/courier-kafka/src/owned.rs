//! The librdkafka properties Courier sets itself. Any other property passes through to
//! librdkafka as given; these are refused, because a guarantee rests on Courier's value, and the
//! refusal says which Courier setting to use instead.

use courier_core::{Error, ErrorKind};

/// Each property Courier owns (aliases included) and why.
const OWNED: &[(&str, &str)] = &[
    (
        "enable.idempotence",
        "the idempotent producer is always on: without it librdkafka's retries can write an event \
         twice or reorder an aggregate's events",
    ),
    ("acks", ACKS),
    ("request.required.acks", ACKS),
    ("message.timeout.ms", DELIVERY_TIMEOUT),
    ("delivery.timeout.ms", DELIVERY_TIMEOUT),
    ("bootstrap.servers", BOOTSTRAP),
    ("metadata.broker.list", BOOTSTRAP),
    ("group.id", "a consumer's group is the one named in subscribe"),
    ("enable.auto.commit", AUTO_COMMIT),
    ("auto.commit.enable", AUTO_COMMIT),
    (
        "transactional.id",
        "the producer is idempotent, not transactional: Courier's ACK is a per-event delivery \
         report, which a transaction would withhold until its commit",
    ),
];

const ACKS: &str = "it is always `all`: an ACK means every in-sync replica has the event (see the crate \
                    documentation on what an ACK guarantees and `min.insync.replicas`)";
const DELIVERY_TIMEOUT: &str = "it is set from KafkaConfig::delivery_timeout (relay config: \
                                bus.kafka.delivery_timeout), which bounds the time to every \
                                verdict; the relay's lease fencing relies on that bound";
const BOOTSTRAP: &str = "the brokers come from the bus URL (kafka://host:port[,host:port])";
const AUTO_COMMIT: &str = "it is always off: Courier commits an offset only once the messages before \
                           it were handled (use KafkaConfig::commit_interval for how often)";

/// Refuses `key` = `value` when Courier owns the property, naming it and saying why; `value` is
/// not repeated, as it might be a credential put under the wrong key.
pub(crate) fn check(key: &str, value: &str) -> Result<(), Error> {
    let why = match OWNED.iter().find(|(owned, _)| *owned == key) {
        Some((_, why)) => *why,
        // Every other partitioner hashes the key, keeping an aggregate on one partition.
        None if key == "partitioner" && value == "random" => {
            "`random` ignores the record key, so an aggregate's events would spread over partitions \
             and lose their order; use a key-hashing partitioner (e.g. murmur2_random, consistent_random)"
        }
        None => return Ok(()),
    };
    Err(Error::new(ErrorKind::Config, format!("librdkafka property `{key}` cannot be set: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_properties_are_refused_naming_the_key_and_the_setting_to_use() {
        for (key, expected) in [
            ("enable.idempotence", "idempotent producer is always on"),
            ("acks", "always `all`"),
            ("request.required.acks", "always `all`"),
            ("message.timeout.ms", "KafkaConfig::delivery_timeout"),
            ("enable.auto.commit", "KafkaConfig::commit_interval"),
            ("bootstrap.servers", "bus URL"),
        ] {
            let err = check(key, "x").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            let text = err.to_string();
            assert!(text.contains(&format!("`{key}` cannot be set")) && text.contains(expected), "{text}");
        }
    }

    #[test]
    fn other_properties_pass_through() {
        for (key, value) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("linger.ms", "5"),
            ("partitioner", "murmur2_random"),
        ] {
            check(key, value).unwrap();
        }
        assert!(check("partitioner", "random").unwrap_err().to_string().contains("lose their order"));
    }
}
