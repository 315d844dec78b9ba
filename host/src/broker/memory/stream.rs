//! A stream of the memory backend: its entries, kept in order of sequence
//! number, and its consumer groups' cursors and pending entries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::broker::{parse_entry_id, Entry, Field};

#[derive(Default)]
pub(super) struct Stream {
    pub(super) entries: VecDeque<Stored>,
    /// Sequence number of the next entry; the first entry is 1.
    pub(super) next_seq: u64,
    pub(super) groups: HashMap<String, Group>,
}

pub(super) struct Stored {
    pub(super) seq: u64,
    pub(super) ms: u64,
    pub(super) entry: Entry,
    /// Deleted entries keep their place so that positions stay arithmetic;
    /// nobody reads them again (as in Redis).
    pub(super) deleted: bool,
}

pub(super) struct Group {
    /// Sequence number of the last entry delivered to the group (0: none).
    pub(super) cursor: u64,
    pub(super) pending: BTreeMap<u64, Pending>,
}

pub(super) struct Pending {
    pub(super) consumer: String,
    pub(super) since: Instant,
    pub(super) deliveries: u32,
}

impl Stream {
    /// Drops the oldest entries until `n` more fit in `capacity`, sparing
    /// entries some group has not finished with; whether they fit.
    pub(super) fn room_for(&mut self, capacity: usize, n: usize) -> bool {
        if self.next_seq == 0 {
            self.next_seq = 1;
        }
        let finished_below = if self.groups.is_empty() {
            u64::MAX
        } else {
            self.groups
                .values()
                .map(|g| {
                    g.pending
                        .keys()
                        .next()
                        .copied()
                        .unwrap_or(g.cursor + 1)
                        .min(g.cursor + 1)
                })
                .min()
                .unwrap_or(0)
        };
        while self.entries.len() + n > capacity
            && self.entries.front().is_some_and(|e| e.seq < finished_below)
        {
            self.entries.pop_front();
        }
        self.entries.len() + n <= capacity
    }

    /// Appends an entry (room was made) and returns its id.
    pub(super) fn push(&mut self, fields: &[Field]) -> String {
        let seq = self.next_seq;
        self.next_seq += 1;
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let id = format!("{ms}-{seq}");
        self.entries.push_back(Stored {
            seq,
            ms,
            entry: Entry {
                id: id.clone(),
                fields: Arc::new(fields.to_vec()),
            },
            deleted: false,
        });
        id
    }

    pub(super) fn stored(&self, seq: u64) -> Option<&Stored> {
        let first = self.entries.front()?.seq;
        self.entries.get(seq.checked_sub(first)? as usize)
    }

    pub(super) fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }
}

pub(super) fn seq_of(id: &str) -> anyhow::Result<u64> {
    parse_entry_id(id).map(|(_, seq)| seq)
}
