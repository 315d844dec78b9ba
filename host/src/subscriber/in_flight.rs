//! The in-flight ledger: which entries this consumer has taken and not
//! finished, so that keep-alives cover them and a reclaim does not take
//! them twice.
//!
//! An entry is in the ledger for exactly as long as its job lives: the job
//! holds an [`InFlightEntry`], which leaves the ledger when the job
//! finishes ([`InFlightEntry::release`]) or is dropped on any other path
//! (a wait abandoned at the shutdown deadline, say).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

/// Where an entry lives: its stream and id.
pub(super) type EntryRef = (String, String);

/// The entries taken and not finished. Every entry goes in and out once, so
/// the hash is the fast one (entry ids come from the backend, not from
/// anyone who could choose colliding keys); SipHash cost ~1% of the host's
/// CPU on the Redis path.
#[derive(Default)]
pub(super) struct InFlight {
    entries: Mutex<HashSet<EntryRef, foldhash::fast::RandomState>>,
}

impl InFlight {
    /// Puts `entry` in the ledger until the returned handle is released or
    /// dropped.
    pub fn register(self: &Arc<Self>, stream: &str, id: &str) -> InFlightEntry {
        let entry = (stream.to_string(), id.to_string());
        self.entries.lock().insert(entry.clone());
        InFlightEntry {
            ledger: self.clone(),
            entry: Some(entry),
        }
    }

    /// Whether the entry `id` of `stream` is in flight here.
    pub fn contains(&self, stream: &str, id: &str) -> bool {
        // Borrowed lookups need the owned tuple: a reclaim is rare.
        let entry = (stream.to_string(), id.to_string());
        self.entries.lock().contains(&entry)
    }

    /// How many entries are in flight.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// The entries in flight, by stream: the ids to keep alive.
    pub fn by_stream(&self) -> HashMap<String, Vec<String>> {
        let mut by_stream: HashMap<String, Vec<String>> = HashMap::new();
        for (stream, id) in self.entries.lock().iter() {
            by_stream
                .entry(stream.clone())
                .or_default()
                .push(id.clone());
        }
        by_stream
    }
}

/// One entry's place in the [`InFlight`] ledger; it leaves the ledger when
/// this is released or dropped.
pub(super) struct InFlightEntry {
    ledger: Arc<InFlight>,
    /// `None` once released.
    entry: Option<EntryRef>,
}

impl InFlightEntry {
    /// Takes the entry out of the ledger, and returns where it lives (to
    /// acknowledge it).
    pub fn release(mut self) -> EntryRef {
        let entry = self.entry.take().expect("released once");
        self.ledger.entries.lock().remove(&entry);
        entry
    }
}

impl Drop for InFlightEntry {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.ledger.entries.lock().remove(&entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_in_flight_until_released_or_dropped() {
        let ledger = Arc::new(InFlight::default());
        let a = ledger.register("s", "1-0");
        let b = ledger.register("s", "2-0");
        let c = ledger.register("t", "1-0");
        assert_eq!(ledger.len(), 3);
        assert!(ledger.contains("s", "1-0") && ledger.contains("t", "1-0"));
        let mut ids = ledger.by_stream().remove("s").unwrap();
        ids.sort();
        assert_eq!(ids, ["1-0", "2-0"]);
        assert_eq!(a.release(), ("s".to_string(), "1-0".to_string()));
        assert!(!ledger.contains("s", "1-0"));
        drop(b);
        assert!(!ledger.contains("s", "2-0"));
        assert_eq!(ledger.len(), 1);
        drop(c);
        assert_eq!(ledger.len(), 0);
    }
}
