//! The embedded backend: Redis Streams semantics inside one process.
//!
//! A stream keeps at most `capacity` entries, as `XADD ... MAXLEN` would, and
//! trims the oldest to make room, but only entries every consumer group has
//! finished with: while the slowest group holds `capacity` unfinished
//! entries, appending waits (backpressure) instead of dropping. A stream with
//! no group (a dead-letter stream) just keeps its newest `capacity` entries.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

mod commit;
mod stream;

use super::{
    parse_entry_id, Append, Broker, Delivery, Entry, GroupCreated, MissingGroup, StartFrom,
};
use crate::kv::{Commit, Outcome};
use stream::{seq_of, Group, Pending, Stream};

/// The in-memory broker. Cheap to share: clone the `Arc`.
pub struct MemoryBroker {
    state: Mutex<HashMap<String, Stream>>,
    /// Idempotency marks and when they expire.
    marks: Mutex<HashMap<String, Instant>>,
    /// Key-value buckets by storage name. Taken after `state` by a commit,
    /// so that custody, reads, writes, appends and the ack are one step.
    kv: Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>,
    /// Woken on every append and every ack: readers wait for entries,
    /// writers for room. One signal keeps the logic simple; the waiters
    /// re-check their own condition.
    changed: Notify,
    capacity: usize,
    /// Times each group's consumer was asked to end its blocking read
    /// ([`Broker::wake_reader`]): a read ends when the count moves while it
    /// waits.
    wakes: Mutex<HashMap<String, HashMap<String, u64>>>,
}

impl MemoryBroker {
    /// A broker whose streams hold at most `capacity` unfinished entries.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(MemoryBroker {
            state: Mutex::new(HashMap::new()),
            marks: Mutex::new(HashMap::new()),
            kv: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            capacity: capacity.max(1),
            wakes: Mutex::new(HashMap::new()),
        })
    }

    /// How many times `consumer` of `group` was woken.
    fn wakes_of(&self, group: &str, consumer: &str) -> u64 {
        let wakes = self.wakes.lock();
        wakes
            .get(group)
            .and_then(|g| g.get(consumer))
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Stream>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock()
    }

    fn lock_kv(&self) -> parking_lot::MutexGuard<'_, HashMap<String, BTreeMap<String, Vec<u8>>>> {
        self.kv.lock()
    }

    /// Appends one entry if the stream has room; `None` when it is full.
    fn try_append(&self, stream: &str, fields: &[super::Field]) -> Option<String> {
        let mut state = self.lock();
        let s = state.entry(stream.to_string()).or_default();
        if !s.room_for(self.capacity, 1) {
            return None;
        }
        Some(s.push(fields))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn append(&self, entries: Vec<Append>) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(entries.len());
        for append in entries {
            loop {
                let room = self.changed.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                if let Some(id) = self.try_append(&append.stream, &append.fields) {
                    ids.push(id);
                    break;
                }
                room.await;
            }
            self.changed.notify_waiters();
        }
        Ok(ids)
    }

    async fn create_group(
        &self,
        stream: &str,
        group: &str,
        start: StartFrom,
    ) -> anyhow::Result<GroupCreated> {
        let mut state = self.lock();
        let s = state.entry(stream.to_string()).or_default();
        if s.next_seq == 0 {
            s.next_seq = 1;
        }
        if s.groups.contains_key(group) {
            return Ok(GroupCreated::Existed);
        }
        let first = s.entries.front().map_or(s.last_seq(), |e| e.seq - 1);
        let cursor = match start {
            StartFrom::New => s.last_seq(),
            StartFrom::Beginning => first,
            StartFrom::After(id) => seq_of(&id)?.max(first),
        };
        let skipped = s
            .entries
            .iter()
            .filter(|e| e.seq <= cursor && !e.deleted)
            .count() as u64;
        s.groups.insert(
            group.to_string(),
            Group {
                cursor,
                pending: BTreeMap::new(),
            },
        );
        Ok(GroupCreated::Created { skipped })
    }

    async fn read(
        &self,
        group: &str,
        consumer: &str,
        streams: &[String],
        count: usize,
        block: Duration,
    ) -> anyhow::Result<Vec<Delivery>> {
        let deadline = Instant::now() + block;
        let woken = self.wakes_of(group, consumer);
        loop {
            let arrived = self.changed.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let mut out = Vec::new();
            {
                let mut state = self.lock();
                let now = Instant::now();
                for name in streams {
                    let missing = || MissingGroup {
                        stream: name.clone(),
                        group: group.to_string(),
                    };
                    let s = state.get_mut(name).ok_or_else(missing)?;
                    let last = s.last_seq();
                    let first = s.entries.front().map_or(last + 1, |e| e.seq);
                    let g = s.groups.get(group).ok_or_else(missing)?;
                    let mut seq = (g.cursor + 1).max(first);
                    let mut taken = Vec::new();
                    let mut cursor = g.cursor;
                    while seq <= last && out.len() + taken.len() < count {
                        let stored = s.stored(seq).expect("unfinished entries are retained");
                        if !stored.deleted {
                            taken.push((seq, stored.entry.clone()));
                        }
                        cursor = seq;
                        seq += 1;
                    }
                    let g = s.groups.get_mut(group).expect("checked above");
                    g.cursor = g.cursor.max(cursor);
                    for (seq, entry) in taken {
                        g.pending.insert(
                            seq,
                            Pending {
                                consumer: consumer.to_string(),
                                since: now,
                                deliveries: 1,
                            },
                        );
                        out.push(Delivery {
                            stream: name.clone(),
                            entry,
                            deliveries: 1,
                        });
                    }
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
            // Woken since the read began (a shutdown): end as if `block` ran
            // out. A wake before it began has no effect on it.
            if self.wakes_of(group, consumer) != woken {
                return Ok(Vec::new());
            }
            if tokio::time::timeout_at(deadline.into(), arrived)
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn wake_reader(&self, group: &str, consumer: &str) {
        {
            let mut wakes = self.wakes.lock();
            let count = wakes
                .entry(group.to_string())
                .or_default()
                .entry(consumer.to_string())
                .or_default();
            *count += 1;
        }
        self.changed.notify_waiters();
    }

    async fn ack(&self, group: &str, stream: &str, ids: &[String]) -> anyhow::Result<()> {
        {
            let mut state = self.lock();
            // As Redis's XACK: nothing pending there, nothing to do.
            let Some(g) = state.get_mut(stream).and_then(|s| s.groups.get_mut(group)) else {
                return Ok(());
            };
            for id in ids {
                g.pending.remove(&seq_of(id)?);
            }
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> anyhow::Result<Vec<Delivery>> {
        let mut state = self.lock();
        let missing = || MissingGroup {
            stream: stream.to_string(),
            group: group.to_string(),
        };
        let s = state.get_mut(stream).ok_or_else(missing)?;
        let now = Instant::now();
        let mut claimed = Vec::new();
        let g = s.groups.get_mut(group).ok_or_else(missing)?;
        for (seq, p) in g.pending.iter_mut() {
            if claimed.len() >= count {
                break;
            }
            if now.duration_since(p.since) >= min_idle {
                p.consumer = consumer.to_string();
                p.since = now;
                p.deliveries += 1;
                claimed.push((*seq, p.deliveries));
            }
        }
        Ok(claimed
            .into_iter()
            .filter_map(|(seq, deliveries)| {
                s.stored(seq).filter(|e| !e.deleted).map(|stored| Delivery {
                    stream: stream.to_string(),
                    entry: stored.entry.clone(),
                    deliveries,
                })
            })
            .collect())
    }

    async fn touch(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        ids: &[String],
    ) -> anyhow::Result<()> {
        let mut state = self.lock();
        let pending = state
            .get_mut(stream)
            .and_then(|s| s.groups.get_mut(group))
            .map(|g| &mut g.pending)
            .ok_or_else(|| MissingGroup {
                stream: stream.to_string(),
                group: group.to_string(),
            })?;
        let now = Instant::now();
        for id in ids {
            if let Some(p) = pending.get_mut(&seq_of(id)?) {
                if p.consumer == consumer {
                    p.since = now;
                }
            }
        }
        Ok(())
    }

    async fn range(
        &self,
        stream: &str,
        from: Option<&str>,
        to: Option<&str>,
        count: usize,
    ) -> anyhow::Result<Vec<Entry>> {
        let from = from.map(parse_entry_id).transpose()?.unwrap_or((0, 0));
        let to = to
            .map(parse_entry_id)
            .transpose()?
            .unwrap_or((u64::MAX, u64::MAX));
        let state = self.lock();
        let Some(s) = state.get(stream) else {
            return Ok(Vec::new());
        };
        Ok(s.entries
            .iter()
            .filter(|e| !e.deleted && (e.ms, e.seq) >= from && (e.ms, e.seq) <= to)
            .take(count)
            .map(|e| e.entry.clone())
            .collect())
    }

    async fn is_marked(&self, key: &str) -> anyhow::Result<bool> {
        let marks = self.marks.lock();
        Ok(marks.get(key).is_some_and(|until| *until > Instant::now()))
    }

    async fn mark(&self, key: &str, ttl: Duration) -> anyhow::Result<()> {
        let mut marks = self.marks.lock();
        let now = Instant::now();
        // Expired marks go when the map would otherwise grow.
        if marks.len() >= 1024 && marks.len().is_power_of_two() {
            marks.retain(|_, until| *until > now);
        }
        marks.entry(key.to_string()).or_insert(now + ttl);
        Ok(())
    }

    async fn delete(&self, stream: &str, ids: &[String]) -> anyhow::Result<()> {
        let seqs = ids
            .iter()
            .map(|id| seq_of(id))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(s) = self.lock().get_mut(stream) {
            for e in s.entries.iter_mut().filter(|e| seqs.contains(&e.seq)) {
                e.deleted = true;
            }
        }
        Ok(())
    }

    async fn kv_get(&self, bucket: &str, keys: &[String]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        let kv = self.lock_kv();
        let b = kv.get(bucket);
        Ok(keys
            .iter()
            .map(|k| b.and_then(|b| b.get(k)).cloned())
            .collect())
    }

    async fn kv_scan(
        &self,
        bucket: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> anyhow::Result<(Vec<String>, Option<String>)> {
        // The cursor is the last key of the previous page: keys are sorted.
        let kv = self.lock_kv();
        let Some(b) = kv.get(bucket) else {
            return Ok((Vec::new(), None));
        };
        let from = match cursor {
            Some(after) => std::ops::Bound::Excluded(after.to_string()),
            None => std::ops::Bound::Unbounded,
        };
        let mut keys: Vec<String> = b
            .range((from, std::ops::Bound::Unbounded))
            .take(count.max(1) + 1)
            .map(|(k, _)| k.clone())
            .collect();
        let next = if keys.len() > count.max(1) {
            keys.pop();
            keys.last().cloned()
        } else {
            None
        };
        Ok((keys, next))
    }

    async fn commit(&self, commits: &[Commit]) -> anyhow::Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(commits.len());
        self.try_commit(commits, &mut outcomes);
        self.changed.notify_waiters();
        Ok(outcomes)
    }

    async fn backlog(&self, stream: &str, group: &str) -> anyhow::Result<u64> {
        let state = self.lock();
        let g = state.get(stream).and_then(|s| s.groups.get(group));
        let (Some(s), Some(g)) = (state.get(stream), g) else {
            return Err(MissingGroup {
                stream: stream.to_string(),
                group: group.to_string(),
            }
            .into());
        };
        Ok(s.last_seq().saturating_sub(g.cursor) + g.pending.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: &str) -> Vec<super::super::Field> {
        vec![("event".to_string(), v.as_bytes().to_vec())]
    }

    fn append(stream: &str, v: &str) -> Append {
        Append {
            stream: stream.into(),
            fields: fields(v),
        }
    }

    /// A commit whose emits do not fit (a full stream nobody has finished)
    /// applies nothing and says so at once, rather than wait: waiting would
    /// hold up every later commit of the host, the acks among them.
    #[tokio::test]
    async fn a_commit_into_a_full_stream_is_busy_not_waiting() {
        use crate::kv::{Commit, KvEffects, KvWrite, Source};
        let broker = MemoryBroker::new(2);
        broker
            .create_group("in", "g", StartFrom::Beginning)
            .await
            .unwrap();
        broker
            .create_group("full", "other", StartFrom::Beginning)
            .await
            .unwrap();
        broker
            .append(vec![
                append("full", "a"),
                append("full", "b"),
                append("in", "x"),
            ])
            .await
            .unwrap();
        let got = broker
            .read("g", "c", &["in".to_string()], 1, Duration::ZERO)
            .await
            .unwrap();
        let write = KvWrite {
            bucket: "b".into(),
            key: "k".into(),
            value: Some(b"1".to_vec()),
        };
        let commit = Commit {
            source: Some(Source {
                stream: "in".into(),
                group: "g".into(),
                consumer: "c".into(),
                id: got[0].entry.id.clone(),
            }),
            effects: KvEffects {
                writes: vec![write],
                ..Default::default()
            },
            appends: vec![append("full", "c")],
            mark: None,
        };
        let outcome = tokio::time::timeout(Duration::from_secs(5), broker.commit(&[commit]))
            .await
            .expect("a commit never waits for room")
            .unwrap();
        assert_eq!(outcome, vec![Outcome::Busy]);
        assert_eq!(broker.kv_get("b", &["k".into()]).await.unwrap(), vec![None]);
        assert_eq!(broker.backlog("in", "g").await.unwrap(), 1, "not acked");
    }

    const NOW: Duration = Duration::ZERO;

    #[tokio::test]
    async fn groups_each_get_every_entry_and_consumers_share_them() {
        let b = MemoryBroker::new(100);
        b.create_group("s", "g1", StartFrom::New).await.unwrap();
        b.create_group("s", "g2", StartFrom::New).await.unwrap();
        b.append(vec![append("s", "a"), append("s", "b")])
            .await
            .unwrap();
        let s = vec!["s".to_string()];
        let c1 = b.read("g1", "c1", &s, 1, NOW).await.unwrap();
        let c2 = b.read("g1", "c2", &s, 10, NOW).await.unwrap();
        assert_eq!((c1.len(), c2.len()), (1, 1));
        assert_ne!(c1[0].entry.id, c2[0].entry.id);
        assert_eq!(b.read("g2", "x", &s, 10, NOW).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn new_groups_start_after_existing_entries_unless_asked() {
        let b = MemoryBroker::new(100);
        b.append(vec![append("s", "old")]).await.unwrap();
        b.create_group("s", "new", StartFrom::New).await.unwrap();
        b.create_group("s", "all", StartFrom::Beginning)
            .await
            .unwrap();
        let s = vec!["s".to_string()];
        assert!(b.read("new", "c", &s, 10, NOW).await.unwrap().is_empty());
        assert_eq!(b.read("all", "c", &s, 10, NOW).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_full_stream_makes_append_wait_until_an_ack() {
        let b = MemoryBroker::new(2);
        b.create_group("s", "g", StartFrom::New).await.unwrap();
        b.append(vec![append("s", "1"), append("s", "2")])
            .await
            .unwrap();
        let writer = {
            let b = b.clone();
            tokio::spawn(async move { b.append(vec![append("s", "3")]).await })
        };
        let s = vec!["s".to_string()];
        let got = b.read("g", "c", &s, 10, NOW).await.unwrap();
        assert_eq!(got.len(), 2);
        assert!(
            !writer.is_finished(),
            "append must wait while the stream is full"
        );
        b.ack("g", "s", &[got[0].entry.id.clone()]).await.unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(b.backlog("s", "g").await.unwrap(), 2);
        let kept = b.range("s", None, None, 10).await.unwrap();
        assert_eq!(
            kept.len(),
            2,
            "the finished entry made room for the new one"
        );
        assert_eq!(kept[0].id, got[1].entry.id);
    }

    #[tokio::test]
    async fn idle_pending_entries_are_reclaimed_with_a_higher_delivery_count() {
        let b = MemoryBroker::new(10);
        b.create_group("s", "g", StartFrom::New).await.unwrap();
        b.append(vec![append("s", "x")]).await.unwrap();
        let s = vec!["s".to_string()];
        let first = b.read("g", "dead", &s, 1, NOW).await.unwrap();
        assert_eq!(first[0].deliveries, 1);
        let busy = b
            .claim_idle("s", "g", "alive", Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert!(busy.is_empty(), "a recently delivered entry is not idle");
        let claimed = b.claim_idle("s", "g", "alive", NOW, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].deliveries, 2);
        assert_eq!(claimed[0].entry, first[0].entry);
    }

    #[tokio::test]
    async fn read_blocks_until_an_entry_arrives() {
        let b = MemoryBroker::new(10);
        b.create_group("s", "g", StartFrom::New).await.unwrap();
        let reader = {
            let b = b.clone();
            tokio::spawn(async move {
                b.read("g", "c", &["s".to_string()], 10, Duration::from_secs(30))
                    .await
            })
        };
        b.append(vec![append("s", "late")]).await.unwrap();
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn a_woken_read_ends_at_once_and_an_earlier_wake_is_forgotten() {
        let b = MemoryBroker::new(10);
        b.create_group("s", "g", StartFrom::New).await.unwrap();
        let read = |b: Arc<MemoryBroker>| {
            tokio::spawn(async move {
                b.read("g", "c", &["s".to_string()], 10, Duration::from_secs(3600))
                    .await
            })
        };
        // On this single-threaded runtime, a yield lets the reader run
        // until it waits.
        let reader = read(b.clone());
        tokio::task::yield_now().await;
        b.wake_reader("g", "c").await;
        let ended = tokio::time::timeout(Duration::from_secs(60), reader).await;
        assert!(ended
            .expect("the woken read ended")
            .unwrap()
            .unwrap()
            .is_empty());
        // That wake is over: the next read waits for its entry.
        let reader = read(b.clone());
        tokio::task::yield_now().await;
        b.append(vec![append("s", "late")]).await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn finished_entries_stay_readable_until_room_is_needed() {
        let b = MemoryBroker::new(10);
        b.create_group("s", "g", StartFrom::New).await.unwrap();
        b.append(vec![append("s", "done")]).await.unwrap();
        let got = b.read("g", "c", &["s".to_string()], 1, NOW).await.unwrap();
        b.ack("g", "s", &[got[0].entry.id.clone()]).await.unwrap();
        assert_eq!(b.backlog("s", "g").await.unwrap(), 0);
        assert_eq!(b.range("s", None, None, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_stream_without_groups_keeps_its_newest_entries() {
        let b = MemoryBroker::new(2);
        for v in ["1", "2", "3"] {
            b.append(vec![append("dlq", v)]).await.unwrap();
        }
        let kept = b.range("dlq", None, None, 10).await.unwrap();
        let values: Vec<_> = kept.iter().map(|e| e.fields[0].1.clone()).collect();
        assert_eq!(values, vec![b"2".to_vec(), b"3".to_vec()]);
    }
}
