//! Shared by the tests that need the Tansu broker.

use std::net::TcpStream;
use std::time::Duration;

/// Tansu's listener, as scripts/services.sh starts it.
pub const TANSU: &str = "127.0.0.1:9092";

/// A bus config for Tansu. Its delivery timeout is 30 s instead of the 4 s default (sized for an
/// outbox relay's lease): Tansu on a loaded two-core machine sometimes takes several seconds to
/// acknowledge, and these tests check behaviour, not latency.
pub fn tansu() -> courier_kafka::KafkaConfig {
    courier_kafka::KafkaConfig::new(TANSU).delivery_timeout(Duration::from_secs(30))
}

/// Fails the test loudly when the broker is not there.
pub fn require_tansu() {
    let addr = TANSU.parse().expect("valid address");
    if let Err(err) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        panic!("the Tansu Kafka broker is not reachable at {TANSU} ({err}); start it with `bash scripts/services.sh`");
    }
}
