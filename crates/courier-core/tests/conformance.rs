//! The conformance suite on the in-memory bus.

use courier_core::MemoryBus;

struct Memory;

impl courier_conformance::Harness for Memory {
    type Bus = MemoryBus;

    async fn bus(&self) -> MemoryBus {
        MemoryBus::default()
    }
}

courier_conformance::conformance_tests!(Memory);
