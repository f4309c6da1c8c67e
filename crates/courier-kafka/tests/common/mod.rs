//! Shared by the tests that need the Tansu broker.

use std::net::TcpStream;
use std::time::Duration;

/// Tansu's listener, as scripts/services.sh starts it.
pub const TANSU: &str = "127.0.0.1:9092";

/// Fails the test loudly when the broker is not there.
pub fn require_tansu() {
    let addr = TANSU.parse().expect("valid address");
    if let Err(err) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        panic!("the Tansu Kafka broker is not reachable at {TANSU} ({err}); start it with `bash scripts/services.sh`");
    }
}
