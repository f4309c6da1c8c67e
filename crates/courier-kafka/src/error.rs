//! librdkafka error codes mapped to Courier's [`ErrorKind`], which decides retryability.

use courier_core::{Error, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

/// The Courier kind of a librdkafka or broker error code.
///
/// Codes not listed are treated as [`ErrorKind::Unavailable`] (retryable): for an event whose
/// fate is unknown, a re-publish that may duplicate is safer than a verdict that drops it.
pub(crate) fn kind_of(code: Code) -> ErrorKind {
    match code {
        Code::MessageSizeTooLarge | Code::InvalidMessageSize | Code::MessageBatchTooLarge => {
            ErrorKind::PayloadTooLarge
        }
        Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition => ErrorKind::NotFound,
        Code::InvalidTopic
        | Code::InvalidRecord
        | Code::InvalidMessage
        | Code::InvalidRequiredAcks
        | Code::InvalidTimestamp
        | Code::PolicyViolation
        | Code::UnsupportedForMessageFormat
        | Code::UnsupportedCompressionType
        | Code::InvalidArgument
        | Code::BadMessage => ErrorKind::Rejected,
        Code::TopicAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::TransactionalIdAuthorizationFailed
        | Code::SaslAuthenticationFailed
        | Code::Authentication
        | Code::InvalidConfig
        | Code::UnsupportedVersion
        | Code::UnsupportedFeature => ErrorKind::Config,
        Code::MessageTimedOut | Code::RequestTimedOut | Code::OperationTimedOut | Code::TimedOutQueue => {
            ErrorKind::Timeout
        }
        Code::BrokerTransportFailure
        | Code::AllBrokersDown
        | Code::NetworkException
        | Code::Resolve
        | Code::SSL
        | Code::BrokerNotAvailable => ErrorKind::Connection,
        Code::QueueFull => ErrorKind::Backpressure,
        // Purged before a verdict (producer dropped): it may or may not have been written.
        Code::PurgeQueue | Code::PurgeInflight => ErrorKind::Lost,
        // The producer raised a fatal error; the bus replaces it, so a re-publish can succeed.
        Code::Fatal => ErrorKind::Unavailable,
        _ => ErrorKind::Unavailable,
    }
}

/// Wraps a client error, naming what was being done.
///
/// A refused property is reported by name without its value, which could be a credential under
/// a misspelt key (`sasl.pasword`); librdkafka's description may still quote it, which
/// [`KafkaConfig::scrub`](crate::KafkaConfig) removes for the secret keys it knows.
pub(crate) fn from_kafka(context: impl std::fmt::Display, err: KafkaError) -> Error {
    if let KafkaError::ClientConfig(_, description, key, _) = &err {
        return Error::new(
            ErrorKind::Config,
            format!("{context}: librdkafka property `{key}`: {description}"),
        );
    }
    let kind = match &err {
        KafkaError::ClientCreation(_) | KafkaError::Subscription(_) => ErrorKind::Config,
        KafkaError::Canceled => ErrorKind::Closed,
        other => other.rdkafka_error_code().map_or(ErrorKind::Unavailable, kind_of),
    };
    Error::with_source(kind, context, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_errors_map_to_kinds_with_the_right_retryability() {
        let cases = [
            (Code::MessageSizeTooLarge, ErrorKind::PayloadTooLarge, false),
            (Code::UnknownTopicOrPartition, ErrorKind::NotFound, false),
            (Code::MessageTimedOut, ErrorKind::Timeout, true),
            (Code::AllBrokersDown, ErrorKind::Connection, true),
            (Code::NotEnoughReplicas, ErrorKind::Unavailable, true),
            (Code::QueueFull, ErrorKind::Backpressure, true),
            (Code::TopicAuthorizationFailed, ErrorKind::Config, false),
            (Code::InvalidRecord, ErrorKind::Rejected, false),
            (Code::PurgeInflight, ErrorKind::Lost, true),
            (Code::Fatal, ErrorKind::Unavailable, true),
        ];
        for (code, kind, retryable) in cases {
            assert_eq!(kind_of(code), kind, "{code:?}");
            let err = from_kafka("producing", KafkaError::MessageProduction(code));
            assert_eq!((err.kind(), err.is_retryable()), (kind, retryable), "{code:?}");
        }
    }

    #[test]
    fn a_refused_property_is_named_without_its_value() {
        let refused = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
            "No such configuration property: \"sasl.pasword\"".into(),
            "sasl.pasword".into(),
            "hunter2".into(),
        );
        let err = from_kafka("creating the Kafka producer", refused);
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(
            err.message(),
            "creating the Kafka producer: librdkafka property `sasl.pasword`: No such configuration property: \"sasl.pasword\""
        );
        assert!(err.get_ref().is_none(), "the librdkafka error holds the value");
    }
}
