//! Key-value commits on the memory backend: custody, reads, writes,
//! appends and the ack of each commit as one step, under the broker's
//! locks (streams, then buckets, then marks).

use std::collections::HashMap;
use std::time::Instant;

use super::{seq_of, MemoryBroker, Stream};
use crate::kv::{Commit, Outcome};

impl MemoryBroker {
    /// Applies commits in order, each all or nothing, and says how each
    /// ended.
    pub(super) fn try_commit(&self, commits: &[Commit], outcomes: &mut Vec<Outcome>) {
        let mut state = self.lock();
        let mut kv = self.lock_kv();
        let mut marks = self.marks.lock();
        let now = Instant::now();
        for c in commits {
            let held = c.source.as_ref().map(|src| {
                state
                    .get(&src.stream)
                    .and_then(|s| s.groups.get(&src.group))
                    .and_then(|g| g.pending.get(&seq_of(&src.id).ok()?))
                    .is_some_and(|p| p.consumer == src.consumer)
            });
            if held == Some(false) {
                outcomes.push(Outcome::NotHeld);
                continue;
            }
            let ack = |state: &mut HashMap<String, Stream>| {
                if let Some(src) = &c.source {
                    if let Some(g) = state
                        .get_mut(&src.stream)
                        .and_then(|s| s.groups.get_mut(&src.group))
                    {
                        if let Ok(seq) = seq_of(&src.id) {
                            g.pending.remove(&seq);
                        }
                    }
                }
            };
            if let Some(mark) = &c.mark {
                if marks.get(&mark.key).is_some_and(|until| *until > now) {
                    ack(&mut state);
                    outcomes.push(Outcome::Duplicate);
                    continue;
                }
            }
            let changed = c
                .effects
                .reads
                .iter()
                .find(|r| kv.get(&r.bucket).and_then(|b| b.get(&r.key)) != r.value.as_ref());
            if let Some(r) = changed {
                outcomes.push(Outcome::Conflict {
                    bucket: r.bucket.clone(),
                    key: r.key.clone(),
                });
                continue;
            }
            let mut needed: HashMap<&str, usize> = HashMap::new();
            for a in &c.appends {
                *needed.entry(&a.stream).or_default() += 1;
            }
            let fits = needed.into_iter().all(|(stream, n)| {
                state
                    .entry(stream.to_string())
                    .or_default()
                    .room_for(self.capacity, n)
            });
            if !fits {
                outcomes.push(Outcome::Busy);
                continue;
            }
            for w in &c.effects.writes {
                let bucket = kv.entry(w.bucket.clone()).or_default();
                match &w.value {
                    Some(v) => bucket.insert(w.key.clone(), v.clone()),
                    None => bucket.remove(&w.key),
                };
            }
            for a in &c.appends {
                state
                    .get_mut(&a.stream)
                    .expect("made room above")
                    .push(&a.fields);
            }
            if let Some(mark) = &c.mark {
                marks.insert(mark.key.clone(), now + mark.ttl);
            }
            ack(&mut state);
            outcomes.push(Outcome::Committed);
        }
    }
}
