//! One call's view of its buckets: committed state plus its own buffered
//! writes, and the record of what it read.

use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;

use super::{KeyLock, KeyLocks, KvAccess, KvEffects, KvRead, KvWrite};

/// Why an operation failed, as `wasi:keyvalue`'s `error` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnError {
    /// The bucket is not granted to the plugin (the variant carries no
    /// text: the host logs which grant would allow it).
    AccessDenied,
    /// A limit, a malformed value or the store failing, described.
    Other(String),
}

/// Longest wait for a key's lock by a call that already holds one: long
/// enough for the holder of a hot key to finish an ordinary call, short
/// enough that two calls waiting for each other's keys (a deadlock the
/// host cannot order) lose little before going on without.
pub const HOLDING_WAIT: Duration = Duration::from_millis(50);

/// A handle to an open bucket: its index among the granted buckets.
pub type BucketIx = usize;

/// A key of the call's maps: bucket and key.
type Slot = (BucketIx, String);

/// A [`Slot`] borrowed for a lookup (hashes and compares as the owned pair).
#[derive(Hash)]
struct SlotRef<'a>(BucketIx, &'a str);

impl hashbrown::Equivalent<Slot> for SlotRef<'_> {
    fn equivalent(&self, slot: &Slot) -> bool {
        self.0 == slot.0 && self.1 == slot.1
    }
}

/// One call's transaction. Reads see the committed state plus the call's
/// own writes ("read your writes"); writes stay here until the call
/// succeeds and [`Txn::finish`] hands them to the commit.
#[derive(Default)]
pub struct Txn {
    access: Option<Arc<KvAccess>>,
    ops: u32,
    /// Bytes written so far in this call (keys and values, every write).
    written: usize,
    /// The call is a dry run: its writes will never commit.
    dry_run: bool,
    /// The committed value of each key the call read, as first seen.
    reads: HashMap<Slot, Option<Vec<u8>>>,
    /// The call's writes (`None`: delete), handed to the commit in key
    /// order.
    writes: HashMap<Slot, Option<Vec<u8>>>,
    /// Keys locked in this host on their first read (see [`super::Store`]).
    locks: Vec<KeyLock>,
}

impl Txn {
    /// A transaction over `access`'s buckets (`None`: the plugin has none,
    /// every `open` is denied).
    pub fn new(access: Option<Arc<KvAccess>>) -> Txn {
        Txn {
            access,
            ..Txn::default()
        }
    }

    /// Starts a new call (`dry_run`: one whose writes will never commit):
    /// forgets what the last one read and wrote.
    pub fn reset(&mut self, dry_run: bool) {
        self.dry_run = dry_run;
        self.ops = 0;
        self.written = 0;
        self.reads.clear();
        self.writes.clear();
        self.locks.clear();
    }

    /// Opens a granted bucket by the name the guest uses.
    pub fn open(&self, name: &str) -> Result<BucketIx, TxnError> {
        let granted = self
            .access
            .as_ref()
            .and_then(|a| a.buckets.iter().position(|(n, _)| n == name));
        match granted {
            Some(ix) => Ok(ix),
            None => {
                let plugin = self.access.as_ref().map_or("", |a| &a.plugin);
                tracing::warn!(plugin, bucket = name, "key-value bucket {name:?} not granted: add kv = [{name:?}] to the plugin's [plugin.grants]");
                Err(TxnError::AccessDenied)
            }
        }
    }

    /// The value of `key`: this call's own write if it made one, else the
    /// committed value (remembered, to be checked at commit).
    pub async fn get(&mut self, b: BucketIx, key: &str) -> Result<Option<Vec<u8>>, TxnError> {
        self.count(1)?;
        self.check_key(key)?;
        let at = SlotRef(b, key);
        if let Some(written) = self.writes.get(&at) {
            return Ok(written.clone());
        }
        if let Some(read) = self.reads.get(&at) {
            return Ok(read.clone());
        }
        let access = self.access()?.clone();
        let (name, storage) = &access.buckets[b];
        let value = access
            .store
            .get_one(storage, key)
            .await
            .map_err(|e| reading_failed(name, e))?;
        self.reads.insert((b, key.to_string()), value.clone());
        Ok(value)
    }

    /// The values of `keys`, in order: one round trip for those not yet
    /// seen by this call.
    pub async fn get_many(
        &mut self,
        b: BucketIx,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, TxnError> {
        self.count(keys.len())?;
        for key in &keys {
            self.check_key(key)?;
        }
        let unseen: Vec<String> = keys
            .iter()
            .filter(|k| {
                let at = SlotRef(b, k);
                !self.writes.contains_key(&at) && !self.reads.contains_key(&at)
            })
            .cloned()
            .collect();
        if !unseen.is_empty() {
            let access = self.access()?.clone();
            let storage = &access.buckets[b].1;
            let values = access
                .store
                .get(storage, &unseen)
                .await
                .map_err(|e| reading_failed(&access.buckets[b].0, e))?;
            for (key, value) in unseen.into_iter().zip(values) {
                self.reads.insert((b, key), value);
            }
        }
        Ok(keys
            .into_iter()
            .map(|key| {
                let at = SlotRef(b, &key);
                let value = match self.writes.get(&at) {
                    Some(written) => written.clone(),
                    None => self.reads.get(&at).cloned().flatten(),
                };
                (key, value)
            })
            .collect())
    }

    /// Takes this host's locks on the keys of `keys` the call has not
    /// touched yet (see [`super::Store`]), waiting for each at most
    /// `max_wait`, or [`HOLDING_WAIT`] once the call holds a lock (two
    /// calls each waiting for the other's key give up soon): past it the
    /// call goes on without the lock, and its commit checks what it read.
    /// Returns how long it waited, which the call's time limit does not
    /// count: waiting in line for a key is not the plugin's work.
    pub async fn lock(&mut self, b: BucketIx, keys: &[String], max_wait: Duration) -> Duration {
        let Some(access) = self.access.clone() else {
            return Duration::ZERO;
        };
        // A dry run never commits: it must not hold up the calls that do.
        if self.dry_run {
            return Duration::ZERO;
        }
        let storage = &access.buckets[b].1;
        let mut waited = Duration::ZERO;
        for key in keys {
            let at = SlotRef(b, key);
            let seen = self.reads.contains_key(&at) || self.writes.contains_key(&at);
            if seen || self.locks.iter().any(|l| l.is(storage, key)) {
                continue;
            }
            let wait = match self.locks.is_empty() {
                true => max_wait,
                false => max_wait.min(HOLDING_WAIT),
            };
            let (lock, for_it) = access.store.lock_key(storage, key, wait).await;
            waited += for_it;
            if let Some(lock) = lock {
                self.locks.push(lock);
            }
        }
        waited
    }

    /// Buffers `value` for `key`.
    pub fn set(&mut self, b: BucketIx, key: String, value: Vec<u8>) -> Result<(), TxnError> {
        self.count(1)?;
        self.check_key(&key)?;
        let limit = self.access()?.limits.max_value_bytes;
        if value.len() > limit {
            return Err(TxnError::Other(format!(
                "value of key {key:?} is {} bytes, more than the limit of {limit} ([plugin.kv_limits] max_value_bytes)",
                value.len()
            )));
        }
        self.count_bytes(key.len() + value.len())?;
        self.writes.insert((b, key), Some(value));
        Ok(())
    }

    /// Buffers the removal of `key`.
    pub fn delete(&mut self, b: BucketIx, key: String) -> Result<(), TxnError> {
        self.count(1)?;
        self.check_key(&key)?;
        self.writes.insert((b, key), None);
        Ok(())
    }

    /// Adds `delta` to the integer at `key` (decimal ASCII, as Redis's
    /// `INCRBY` and Spin store it; 0 when not set) and buffers the sum.
    pub async fn increment(
        &mut self,
        b: BucketIx,
        key: String,
        delta: i64,
    ) -> Result<i64, TxnError> {
        let current = self.get(b, &key).await?;
        let value = match &current {
            None => 0,
            Some(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    TxnError::Other(format!(
                        "value of key {key:?} is not an integer, cannot increment it"
                    ))
                })?,
        };
        let sum = value.checked_add(delta).ok_or_else(|| {
            TxnError::Other(format!(
                "incrementing key {key:?} ({value}) by {delta} overflows a signed 64-bit integer"
            ))
        })?;
        self.set(b, key, sum.to_string().into_bytes())?;
        Ok(sum)
    }

    /// One page of the bucket's keys as this call sees them: the committed
    /// keys (Redis `HSCAN` pages: a page may hold more or fewer than asked,
    /// and the listing is not checked at commit: it may be out of date, as
    /// the interface allows), less those this call deleted, and on the
    /// last page the keys this call set that are not committed yet.
    pub async fn list_keys(
        &mut self,
        b: BucketIx,
        cursor: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), TxnError> {
        self.count(1)?;
        let access = self.access()?.clone();
        let storage = &access.buckets[b].1;
        let failed = |e: anyhow::Error| {
            TxnError::Other(format!("listing bucket {:?}: {e:#}", access.buckets[b].0))
        };
        let (mut keys, next) = access
            .store
            .broker()
            .kv_scan(storage, cursor.as_deref(), access.limits.page_keys)
            .await
            .map_err(failed)?;
        keys.retain(|k| !matches!(self.writes.get(&SlotRef(b, k)), Some(None)));
        if next.is_none() {
            let mut added: Vec<String> = self
                .writes
                .iter()
                .filter(|((wb, _), v)| *wb == b && v.is_some())
                .map(|((_, k), _)| k.clone())
                .collect();
            added.sort_unstable();
            if !added.is_empty() {
                let committed = access
                    .store
                    .broker()
                    .kv_get(storage, &added)
                    .await
                    .map_err(failed)?;
                keys.extend(
                    added
                        .into_iter()
                        .zip(committed)
                        .filter(|(_, v)| v.is_none())
                        .map(|(k, _)| k),
                );
            }
        }
        Ok((keys, next))
    }

    /// What the call read and wrote, with storage names, for the commit.
    pub fn finish(&mut self) -> KvEffects {
        let Some(access) = &self.access else {
            return KvEffects::default();
        };
        let storage = |b: BucketIx| access.buckets[b].1.clone();
        let effects = KvEffects {
            reads: self
                .reads
                .drain()
                .map(|((b, key), value)| KvRead {
                    bucket: storage(b),
                    key,
                    value,
                })
                .collect(),
            writes: {
                // In key order: a commit's arguments do not depend on the
                // order of a hash map.
                let mut writes: Vec<_> = self.writes.drain().collect();
                writes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                writes
                    .into_iter()
                    .map(|((b, key), value)| KvWrite {
                        bucket: storage(b),
                        key,
                        value,
                    })
                    .collect()
            },
            locks: KeyLocks(std::mem::take(&mut self.locks)),
        };
        self.ops = 0;
        self.written = 0;
        effects
    }

    fn access(&self) -> Result<&Arc<KvAccess>, TxnError> {
        // Unreachable from a guest: a bucket handle exists only after a
        // granted `open`.
        self.access
            .as_ref()
            .ok_or_else(|| TxnError::Other("no key-value store is configured".into()))
    }

    fn count(&mut self, ops: usize) -> Result<(), TxnError> {
        let limit = self.access()?.limits.max_ops_per_call;
        self.ops = self.ops.saturating_add(ops as u32);
        if self.ops > limit {
            return Err(TxnError::Other(format!(
                "more than {limit} key-value operations in one call ([plugin.kv_limits] max_ops_per_call)"
            )));
        }
        Ok(())
    }

    fn count_bytes(&mut self, bytes: usize) -> Result<(), TxnError> {
        let limit = self.access()?.limits.max_write_bytes_per_call;
        self.written = self.written.saturating_add(bytes);
        if self.written > limit {
            return Err(TxnError::Other(format!(
                "more than {limit} bytes written in one call ([plugin.kv_limits] max_write_bytes_per_call)"
            )));
        }
        Ok(())
    }

    fn check_key(&self, key: &str) -> Result<(), TxnError> {
        let limit = self.access()?.limits.max_key_bytes;
        if key.len() > limit {
            return Err(TxnError::Other(format!(
                "key of {} bytes is longer than the limit of {limit} ([plugin.kv_limits] max_key_bytes)",
                key.len()
            )));
        }
        Ok(())
    }
}

/// A read of bucket `name` that the store could not answer.
fn reading_failed(name: &str, e: anyhow::Error) -> TxnError {
    TxnError::Other(format!("reading bucket {name:?}: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::{Slot, SlotRef};

    #[test]
    fn a_borrowed_slot_finds_what_the_owned_pair_stored() {
        let mut map: hashbrown::HashMap<Slot, u32> = hashbrown::HashMap::new();
        map.insert((0, "k".to_string()), 1);
        map.insert((1, "k".to_string()), 2);
        assert_eq!(map.get(&SlotRef(0, "k")), Some(&1));
        assert_eq!(map.get(&SlotRef(1, "k")), Some(&2));
        assert_eq!(map.get(&SlotRef(2, "k")), None);
    }
}
