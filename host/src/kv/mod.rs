//! Key-value state for plugins (`wasi:keyvalue`), committed exactly once
//! with the event that caused it.
//!
//! A call never writes to the store. Its reads go to the committed state
//! (through the [`Broker`](crate::broker::Broker)) and are remembered with the value they saw; its
//! writes are buffered in a [`Txn`]. When the call succeeds, the subscriber
//! hands the reads, the writes, the emitted events and the acknowledgement
//! of the source entry to [`Broker::commit`](crate::broker::Broker::commit) as one [`Commit`], which the
//! backend applies in one atomic step (one Lua script on Redis, one critical
//! section in memory) only if this consumer still holds the entry and every
//! value read is unchanged. A call that fails, traps or times out drops its
//! `Txn`: nothing it wrote is left behind. A crash before the commit leaves
//! the entry pending (delivered again, nothing applied); a crash after it
//! leaves it acknowledged (never delivered again).
//!
//! Storage: one map per bucket, named by [`bucket_storage`]: a plugin's
//! buckets are its own unless its config lists them as shared.

mod store;
mod txn;

pub use store::{KeyLock, NotSent, OnOutcome, Receipt, Store};
pub use txn::{BucketIx, Txn, TxnError, HOLDING_WAIT};

use std::sync::Arc;

use crate::broker::Append;

/// A key of a bucket as the host's maps hold it: storage name and key.
type At = (String, String);

/// An [`At`] borrowed for a lookup: hashes and compares as the owned pair
/// does (a tuple hashes its fields in order), so a lookup on the hot path
/// allocates nothing.
#[derive(Hash)]
struct AtRef<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<At> for AtRef<'_> {
    fn equivalent(&self, at: &At) -> bool {
        self.0 == at.0 && self.1 == at.1
    }
}

/// The buckets `grants` open, under `namespace` (see [`bucket_storage`]):
/// each as the name a plugin opens it by, whether it is shared, and its
/// storage name. The plugin's own come first.
pub fn granted_buckets<'a>(
    namespace: &'a str,
    grants: &'a crate::config::Grants,
) -> impl Iterator<Item = (&'a str, bool, String)> + 'a {
    let own = grants.kv.iter().map(|b| (b, false));
    let shared = grants.kv_shared.iter().map(|b| (b, true));
    own.chain(shared)
        .map(move |(b, shared)| (b.as_str(), shared, bucket_storage(namespace, b, shared)))
}

/// The storage name of a bucket (`runnel:kv:plugin:<namespace>:<bucket>`,
/// or `runnel:kv:shared:<bucket>` for a bucket shared between plugins): a
/// Redis hash, or a map of the memory backend. The namespace is the
/// plugin's name (a shadow uses the plugin it shadows, so that it reads
/// what the live version reads). Bucket names cannot hold `:`, so the last
/// segment is always the bucket.
pub fn bucket_storage(namespace: &str, bucket: &str, shared: bool) -> String {
    if shared {
        format!("runnel:kv:shared:{bucket}")
    } else {
        format!("runnel:kv:plugin:{namespace}:{bucket}")
    }
}

/// Whether `name` may name a bucket: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_bucket_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Bounds on what one call may do with its buckets; each refusal names
/// the limit and where it is set (`[plugin.kv_limits]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvLimits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most key operations in one call (a `get-many` of 10 keys counts 10):
    /// a commit is one step on the store, so its size is bounded.
    pub max_ops_per_call: u32,
    /// Most keys one `list-keys` page returns.
    pub page_keys: usize,
    /// Most bytes (keys and values) one call may write: its commit is one
    /// step on the store, which holds everything else up while it runs.
    pub max_write_bytes_per_call: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_ops_per_call: 1000,
            page_keys: 1000,
            max_write_bytes_per_call: 16 << 20,
        }
    }
}

/// What a plugin may open, and where its reads go: built once per plugin
/// from its config, shared by its instances.
pub struct KvAccess {
    pub store: Arc<Store>,
    /// Granted buckets: the name the guest opens, and its storage name.
    pub buckets: Vec<(String, String)>,
    pub limits: KvLimits,
    /// For the host log line that names a refused bucket and the grant.
    pub plugin: Arc<str>,
}

/// One key as a call read it: which bucket (storage name), which key, and
/// the committed value seen (`None`: not set). At commit the value must
/// still be the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvRead {
    pub bucket: String,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// One key as a call left it: the new value, or `None` to delete it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvWrite {
    pub bucket: String,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// What a successful call did to its buckets: what must still hold and
/// what to write, at commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvEffects {
    pub reads: Vec<KvRead>,
    pub writes: Vec<KvWrite>,
    /// The keys the call locked in this host, let go once its writes are
    /// pending in the [`Store`] (or when dropped).
    pub locks: KeyLocks,
}

/// Locks a call holds on keys (see [`Store`]). A copy holds none: only the
/// call's own effects keep its keys locked.
#[derive(Default)]
pub struct KeyLocks(pub Vec<KeyLock>);

impl Clone for KeyLocks {
    fn clone(&self) -> Self {
        KeyLocks::default()
    }
}

impl PartialEq for KeyLocks {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for KeyLocks {}

impl std::fmt::Debug for KeyLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} key locks", self.0.len())
    }
}

impl KvEffects {
    /// Whether the call used no bucket at all.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.writes.is_empty()
    }
}

/// The entry a commit acknowledges: it must still be pending for
/// `consumer` in `group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub stream: String,
    pub group: String,
    pub consumer: String,
    pub id: String,
}

/// One successful call, to be made durable in one atomic step: check the
/// source entry's custody and every read, then write, append and ack.
#[derive(Clone, Debug)]
pub struct Commit {
    /// `None`: writes outside any delivery (`runnel test` seeding its
    /// state): nothing to check or acknowledge.
    pub source: Option<Source>,
    pub effects: KvEffects,
    /// The events the call emitted, as entries for their streams.
    pub appends: Vec<Append>,
    /// The event's idempotency mark (a dedup window): if it is set, the
    /// event was handled already and the commit only acknowledges the
    /// entry ([`Outcome::Duplicate`]); otherwise it is set with the writes,
    /// so that a duplicate cannot slip in between.
    pub mark: Option<Mark>,
}

/// An idempotency mark: its key, and how long it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub key: String,
    pub ttl: std::time::Duration,
}

impl Commit {
    /// Roughly how many bytes it sends: keys and values read and written,
    /// and the appended entries' fields.
    pub fn size(&self) -> usize {
        let reads = self.effects.reads.iter();
        let writes = self.effects.writes.iter();
        let kv: usize = reads
            .map(|r| r.key.len() + r.value.as_ref().map_or(0, Vec::len))
            .chain(writes.map(|w| w.key.len() + w.value.as_ref().map_or(0, Vec::len)))
            .sum();
        let appended: usize = self
            .appends
            .iter()
            .flat_map(|a| a.fields.iter())
            .map(|(f, v)| f.len() + v.len())
            .sum();
        kv + appended + self.mark.as_ref().map_or(0, |m| m.key.len())
    }
}

/// How a [`Commit`] ended. Only `Committed` applied anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written, appended and acknowledged.
    Committed,
    /// A value the call read has changed since: nothing applied; run the
    /// call again on fresh state.
    Conflict { bucket: String, key: String },
    /// The entry is no longer pending for this consumer: another consumer
    /// took it over (it will handle it), or it was acknowledged already (by
    /// this consumer's earlier commit whose answer was lost, or by the
    /// consumer that took it over), or its group vanished (the subscriber
    /// creates it again and the entry may come back: applying now could
    /// apply it twice). Nothing applied.
    NotHeld,
    /// The event's mark was set: the same event (another entry of it) was
    /// handled already. The entry was acknowledged; nothing else applied.
    Duplicate,
    /// A stream the call emits to is full (the memory backend's
    /// backpressure): nothing applied; run the call again once there is
    /// room. Never waited for inside the commit, which would hold up every
    /// later commit of the host, the acks that make room among them.
    Busy,
    /// The store refused the commit for this call alone (a key of the wrong
    /// type, say): nothing applied; a failed attempt.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::{At, AtRef};

    #[test]
    fn a_borrowed_key_finds_what_the_owned_pair_stored() {
        // The maps of the host's store are looked up by `AtRef`: if it
        // hashed differently from the owned pair, every lookup would miss
        // and each call would wait on the backend for what the host knows.
        let mut map: hashbrown::HashMap<At, u32> = hashbrown::HashMap::new();
        map.insert(("bucket".to_string(), "count:a".to_string()), 1);
        map.insert(("bucketc".to_string(), "ount:a".to_string()), 2);
        assert_eq!(map.get(&AtRef("bucket", "count:a")), Some(&1));
        assert_eq!(map.get(&AtRef("bucketc", "ount:a")), Some(&2));
        assert_eq!(map.get(&AtRef("bucket", "count:b")), None);
        assert_eq!(map.remove(&AtRef("bucket", "count:a")), Some(1));
        assert!(!map.contains_key(&AtRef("bucket", "count:a")));
    }
}
