//! Rows a claim fetched and refused because their aggregate is parked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Remembered while the park holds, so that claims skip them instead of fetching them again
/// (payloads and all) at every sweep, rewind and caught-up poll: a backlog behind a dead event
/// would otherwise be re-read for as long as it waits. Forgotten when the park is lifted, as the
/// relay then reads the aggregate again from its failed row. Bounded by the rows refused.
#[derive(Default)]
pub(super) struct Refused {
    by_aggregate: HashMap<Arc<str>, Vec<i64>>,
    ids: HashSet<i64>,
}

impl Refused {
    pub(super) fn insert(&mut self, aggregate: &Arc<str>, id: i64) {
        if self.ids.insert(id) {
            self.by_aggregate.entry(Arc::clone(aggregate)).or_default().push(id);
        }
    }

    pub(super) fn contains(&self, id: i64) -> bool {
        self.ids.contains(&id)
    }

    /// The aggregate's park is lifted: its rows are to be read again.
    pub(super) fn forget(&mut self, aggregate: &str) {
        for id in self.by_aggregate.remove(aggregate).unwrap_or_default() {
            self.ids.remove(&id);
        }
    }
}
