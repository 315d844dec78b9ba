//! The seam between delivery semantics and a pub/sub backend.
//!
//! A [`Broker`] is deliberately shaped like Redis Streams: append-only streams
//! of entries (ordered field lists), consumer groups with a cursor and a list
//! of pending (delivered, unacknowledged) entries, delivery counters, and
//! reclaiming of entries left idle by a consumer. The in-memory backend
//! implements the same model, so retries, acks and dead-lettering behave the
//! same on both and live once, in [`crate::subscriber`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub mod memory;
pub mod redis;

/// One field of a stream entry. The first field of an event entry is named
/// `event` and holds the JSON envelope.
pub type Field = (String, Vec<u8>);

/// Parses an entry id `<ms>-<seq>` (or a bare `<ms>`) into a sortable pair.
pub fn parse_entry_id(id: &str) -> anyhow::Result<(u64, u64)> {
    let bad = || anyhow::anyhow!("{id:?} is not a stream entry id (expected <ms>-<seq>)");
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Ok((
        ms.parse().map_err(|_| bad())?,
        seq.parse().map_err(|_| bad())?,
    ))
}

/// The name of the field that carries an event envelope.
pub const EVENT_FIELD: &str = "event";

/// An entry as stored on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The backend's id, ordered within a stream (`<ms>-<seq>`).
    pub id: String,
    pub fields: Arc<Vec<Field>>,
}

/// An entry handed to a consumer of a group.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub stream: String,
    pub entry: Entry,
    /// How many times the group has delivered this entry, this time included.
    /// Above 1 only for an entry reclaimed from a consumer that went silent,
    /// so it counts attempts that a dead process could not record.
    pub deliveries: u32,
}

/// Where a new consumer group starts reading.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// Only entries added after the group is created (the Go library's choice).
    #[default]
    New,
    /// Every entry still on the stream.
    Beginning,
    /// Entries after this id: a group the subscriber recreates after it
    /// vanished, past what this consumer had already read. Not a config value.
    #[serde(skip)]
    After(String),
}

/// What [`Broker::create_group`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupCreated {
    /// The group was there already; nothing was written.
    Existed,
    /// The group is new. `skipped` entries were on the stream before its
    /// start and will never be delivered to it (`StartFrom::New` on a stream
    /// that already held entries).
    Created { skipped: u64 },
}

/// How far a group has read a stream (Redis 7's `XINFO GROUPS` and `XINFO
/// STREAM`). `None` where the backend cannot tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupProgress {
    /// The last entry delivered to the group, by any of its consumers
    /// (`None` before the first): where a group that vanished is created
    /// again without handling twice what was read.
    pub last_delivered: Option<String>,
    /// Entries the group has read, counted from the stream's first entry
    /// ever (Redis's `entries-read`).
    pub entries_read: Option<u64>,
    /// Entries ever added to the stream (`entries-added`).
    pub entries_added: Option<u64>,
    /// Entries on the stream now.
    pub length: u64,
    /// The id of the oldest entry on the stream (`None` when empty).
    pub first_entry: Option<String>,
    /// The id of the newest entry ever added (`0-0` for none).
    pub last_generated: Option<String>,
}

impl GroupProgress {
    /// Entries that left the stream so far (trimmed by `MAXLEN`, or
    /// deleted), read or not: always its oldest, as trimming goes.
    pub fn removed(&self) -> Option<u64> {
        self.entries_added?.checked_sub(self.length)
    }

    /// Whether the group has not reached any entry still on the stream:
    /// the last one it was given is older than the oldest there (or, on an
    /// emptied stream, than the newest ever added). Only then can entries
    /// that left the stream unread be told from the counters.
    pub fn behind_what_is_left(&self) -> bool {
        let id = |s: &Option<String>| s.as_deref().and_then(|s| parse_entry_id(s).ok());
        let last = id(&self.last_delivered).unwrap_or((0, 0));
        match (id(&self.first_entry), id(&self.last_generated)) {
            (Some(first), _) => first > last,
            (None, Some(newest)) => newest > last,
            (None, None) => false,
        }
    }

    /// Whether the group has been given the newest entry ever added.
    pub fn caught_up(&self) -> bool {
        let id = |s: &Option<String>| s.as_deref().and_then(|s| parse_entry_id(s).ok());
        id(&self.last_delivered).unwrap_or((0, 0)) >= id(&self.last_generated).unwrap_or((0, 0))
    }
}

/// A consumer group, or the stream it belongs to, does not exist: it was
/// never created, or it vanished under a running host (`DEL` of the stream,
/// `XGROUP DESTROY`, a Redis restarted without persistence). Brokers return
/// it (possibly wrapped in context) so that callers can tell it from a
/// backend that does not answer: see [`MissingGroup::in_error`].
#[derive(Debug, thiserror::Error)]
#[error("consumer group {group:?} does not exist on stream {stream:?}")]
pub struct MissingGroup {
    /// The stream the backend named (for a read of several streams, the
    /// one it complained about).
    pub stream: String,
    pub group: String,
}

impl MissingGroup {
    /// Whether `error` is, or wraps, a missing group.
    pub fn in_error(error: &anyhow::Error) -> bool {
        error.downcast_ref::<MissingGroup>().is_some()
    }
}

/// An entry to append: which stream, and its fields.
#[derive(Clone, Debug)]
pub struct Append {
    pub stream: String,
    pub fields: Vec<Field>,
}

/// A pub/sub backend with consumer groups and at-least-once delivery.
///
/// The contract is written once as checks that every backend passes
/// (`tests/src/contract.rs`, run on memory, one Redis server and a Redis
/// Cluster). Where the two could
/// differ, it says: a missing stream or group is a [`MissingGroup`] error
/// for `read`, `backlog`, `claim_idle` and `touch` alike, and acking there
/// is a no-op (as Redis's `XACK` is); `touch` refreshes only the caller's
/// own entries, never takes one another consumer holds.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Appends entries, in order, in one round trip. Waits while a bounded
    /// stream is full rather than dropping anything.
    async fn append(&self, entries: Vec<Append>) -> anyhow::Result<Vec<String>>;

    /// Creates `group` on `stream` (and the stream) unless it exists. A
    /// group that exists is left as it is, without a write: a Redis at
    /// `maxmemory` refuses `XGROUP CREATE` but still serves reads and acks,
    /// which is what drains it.
    async fn create_group(
        &self,
        stream: &str,
        group: &str,
        start: StartFrom,
    ) -> anyhow::Result<GroupCreated>;

    /// Reads about `count` new entries for `consumer` across `streams`
    /// (Redis may return a few more when several streams have entries),
    /// waiting up to `block` for the first one. Entries read become pending
    /// for that consumer until acknowledged. A missing group or stream is a
    /// [`MissingGroup`] error.
    async fn read(
        &self,
        group: &str,
        consumer: &str,
        streams: &[String],
        count: usize,
        block: Duration,
    ) -> anyhow::Result<Vec<Delivery>>;

    /// Acknowledges entries: they are done for `group` and will not be
    /// delivered again. Acking what is not pending (or where there is no
    /// group) does nothing.
    async fn ack(&self, group: &str, stream: &str, ids: &[String]) -> anyhow::Result<()>;

    /// Takes over up to `count` entries of `stream` pending in `group` for
    /// longer than `min_idle` (their consumer died or stalled), incrementing
    /// their delivery counters.
    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> anyhow::Result<Vec<Delivery>>;

    /// Resets the idle time of entries this consumer is still working on, so
    /// that long handling is not mistaken for a dead consumer. Entries that
    /// another consumer holds (it reclaimed them meanwhile) are left alone:
    /// taking them back would have two consumers handle them.
    async fn touch(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        ids: &[String],
    ) -> anyhow::Result<()>;

    /// Reads entries of a stream by id range, oldest first, outside any
    /// group (for inspecting dead letters and replays).
    async fn range(
        &self,
        stream: &str,
        from: Option<&str>,
        to: Option<&str>,
        count: usize,
    ) -> anyhow::Result<Vec<Entry>>;

    /// Whether `key` was marked (and has not expired): the idempotency
    /// window's question "was this event already handled?".
    async fn is_marked(&self, key: &str) -> anyhow::Result<bool>;

    /// Marks `key` for `ttl` (Redis `SET key 1 NX PX ttl`).
    async fn mark(&self, key: &str, ttl: Duration) -> anyhow::Result<()>;

    /// Deletes entries from a stream (dead letters that were replayed).
    async fn delete(&self, stream: &str, ids: &[String]) -> anyhow::Result<()>;

    /// Entries of `stream` that `group` has not finished: not yet delivered
    /// plus delivered but unacknowledged. A missing group or stream is a
    /// [`MissingGroup`] error, never 0: nothing reads there.
    async fn backlog(&self, stream: &str, group: &str) -> anyhow::Result<u64>;

    /// How far `group` has read `stream`, and how much the stream has lost
    /// to trimming; a [`MissingGroup`] error if the group does not exist. A
    /// backend whose groups cannot vanish and whose streams are never
    /// trimmed may answer [`GroupProgress::default`].
    async fn group_progress(&self, _stream: &str, _group: &str) -> anyhow::Result<GroupProgress> {
        Ok(GroupProgress::default())
    }

    /// Removes the consumers of `group` on `stream` that hold no pending
    /// entries and have been idle longer than `idle`, except `keep` (the
    /// caller itself): every restart of a host leaves a consumer behind,
    /// named after its process. A consumer that holds entries is never
    /// removed (that would drop them from the group's pending list); the
    /// check and the removal are one atomic step. Returns the names removed.
    async fn forget_idle_consumers(
        &self,
        _stream: &str,
        _group: &str,
        _idle: Duration,
        _keep: &str,
    ) -> anyhow::Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Ends `consumer`'s blocking read now, as if its `block` had run out
    /// (the reply, empty or not, still arrives whole), so that a service
    /// stops within moments whatever its `block` is. Without effect when no
    /// read is blocked; a backend whose reads block briefly may ignore it.
    async fn wake_reader(&self, _group: &str, _consumer: &str) {}

    /// The committed values of `keys` in the key-value bucket stored as
    /// `bucket` ([`crate::kv::bucket_storage`]), in order; `None` for a key
    /// that is not set (or a bucket never written).
    async fn kv_get(&self, bucket: &str, keys: &[String]) -> anyhow::Result<Vec<Option<Vec<u8>>>>;

    /// About `count` keys of `bucket` from `cursor` (`None`: the start),
    /// and the cursor of the next page (`None`: this was the last). Keys
    /// written or deleted meanwhile may or may not be listed.
    async fn kv_scan(
        &self,
        bucket: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> anyhow::Result<(Vec<String>, Option<String>)>;

    /// Makes successful calls durable, in order, each in one atomic step:
    /// if its source entry is still pending for its consumer and every
    /// value it read is unchanged, its writes, its appends and the
    /// acknowledgement of its source all apply; otherwise none does. A
    /// missing group holds nothing ([`crate::kv::Outcome::NotHeld`]: the
    /// subscriber creates it again and the entry may come back). A commit
    /// whose emits do not fit a full stream is
    /// [`crate::kv::Outcome::Busy`], never waited for. A later commit sees
    /// the writes of an earlier one. An `Err` means the backend did not
    /// answer or refused the whole batch: some commits may have applied,
    /// and sending them again is safe (an applied one finds its entry
    /// acknowledged: `NotHeld`).
    async fn commit(
        &self,
        commits: &[crate::kv::Commit],
    ) -> anyhow::Result<Vec<crate::kv::Outcome>>;

    /// `messaging.system` in traces: `redis` for Redis, Runnel's own name
    /// for a backend of its own.
    fn system(&self) -> &'static str {
        "runnel.memory"
    }

    /// Whether the backend answers now, for readiness checks.
    async fn ping(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Times a lost connection was made again, for health and metrics.
    fn reconnects(&self) -> u64 {
        0
    }
}
