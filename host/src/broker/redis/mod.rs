//! Redis Streams: how Runnel runs across processes and machines.
//!
//! Entries are written as the Go library writes them (`XADD <stream> MAXLEN ~
//! <cap> * event <json>`), consumer groups share the work, `XACK` comes after
//! the final outcome, and `XAUTOCLAIM` takes over what a dead consumer left
//! pending. Commands go through a [`ConnectionManager`], which reconnects after
//! Redis restarts or drops the connection; each blocking `XREADGROUP` gets a
//! connection of its own (`read.rs`, `reader.rs`), because a blocked connection serves
//! nobody else, with a response timeout longer than its `BLOCK`.

mod cluster;
mod commit;
mod connection;
mod open;
mod read;
mod reader;
mod replies;
pub mod slots;
mod tls;

pub use connection::{Connection, Endpoint};
pub use tls::TlsFiles;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroup, StreamInfoGroupsReply};
use redis::{Client, Value};

use super::{
    parse_entry_id, Append, Broker, Delivery, Entry, GroupCreated, GroupProgress, MissingGroup,
    StartFrom,
};
use open::manager;
use read::{ReaderKey, ReaderSlot};
use replies::{array, entries, int, text};
use slots::{Node, SlotMap};

/// How streams are trimmed on append.
#[derive(Clone, Debug)]
pub struct Trimming {
    /// `MAXLEN` for streams without an entry in `per_stream`.
    pub max_len: u64,
    pub per_stream: HashMap<String, u64>,
    /// `MAXLEN ~` (whole macro nodes, cheap) rather than `MAXLEN =`.
    pub approximate: bool,
}

/// `MAXLEN` of a stream nobody configured otherwise (`[backend] max_len`).
pub const DEFAULT_MAX_LEN: u64 = 1_000_000;

impl Default for Trimming {
    fn default() -> Self {
        Trimming {
            max_len: DEFAULT_MAX_LEN,
            per_stream: HashMap::new(),
            approximate: true,
        }
    }
}

/// The Redis Streams broker, on one server or a Redis Cluster.
pub struct RedisBroker {
    target: Target,
    /// The blocking readers' TLS, for `rediss://` URLs.
    reader_tls: Option<tokio_rustls::TlsConnector>,
    /// The URL (or a cluster's seeds) without passwords, for messages.
    address: String,
    /// One dedicated connection per blocking reader (group, consumer and,
    /// on a cluster, slot: a read of several keys needs them in one slot);
    /// `None` after it failed, until the next read connects again.
    readers: parking_lot::Mutex<HashMap<ReaderKey, ReaderSlot>>,
    /// The server's client id of each blocking reader's connection, and
    /// its node on a cluster, for `CLIENT UNBLOCK` ([`Broker::wake_reader`]).
    reader_ids: parking_lot::Mutex<HashMap<ReaderKey, (Option<Node>, i64)>>,
    /// What a read of several slots could not return beside the entries
    /// it got (they are ours: returning the error would strand them), for
    /// the next read of that consumer to report.
    deferred: parking_lot::Mutex<HashMap<(String, String), anyhow::Error>>,
    trimming: Trimming,
    reconnects: AtomicU64,
}

/// Where commands and blocking reads go.
enum Target {
    Server {
        client: Client,
        /// Replaced when its connection cannot be set up for a reason that
        /// retrying the same connection would not change (a refused login):
        /// the manager keeps such a failure, retrying only I/O errors.
        commands: arc_swap::ArcSwap<ConnectionManager>,
    },
    Cluster {
        /// Routes every keyed command, follows redirections, learns the
        /// topology; connects in the background and again after failures.
        commands: ClusterConnection,
        /// How the readers log in (the first seed's user, password, TLS).
        seed: redis::ConnectionInfo,
        /// Which master serves each slot, for the blocking readers.
        slots: parking_lot::Mutex<SlotMap>,
        /// A reader met a redirection or lost its node: reload `slots`
        /// before the next read.
        stale: std::sync::atomic::AtomicBool,
    },
}

/// Time for a connection attempt before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for a non-blocking command's answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

impl RedisBroker {
    /// Runs one command on the shared connection. Errors read as one line,
    /// "`what` on redis at `address`: Redis's words", each cause once (a
    /// redis-rs error repeats its I/O source in its own text); `NOGROUP`
    /// becomes a [`MissingGroup`] of `stream` and `group`.
    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        what: impl FnOnce() -> String,
        group: Option<(&str, &str)>,
    ) -> anyhow::Result<T> {
        cmd.query_async(&mut self.commands())
            .await
            .map_err(|e| self.error(e, what(), group))
    }

    fn error(
        &self,
        e: redis::RedisError,
        what: String,
        group: Option<(&str, &str)>,
    ) -> anyhow::Error {
        if let (redis::ErrorKind::AuthenticationFailed, Target::Server { client, commands }) =
            (e.kind(), &self.target)
        {
            // The next command logs in afresh (credentials may have been
            // granted since), rather than repeat this failure forever.
            if let Ok(fresh) = manager(client) {
                commands.store(Arc::new(fresh));
            }
        }
        let line = format!("{what} on redis at {}: {e}", self.address);
        match group {
            Some((stream, group)) if e.code() == Some("NOGROUP") => {
                anyhow::Error::new(MissingGroup {
                    stream: stream.to_string(),
                    group: group.to_string(),
                })
                .context(line)
            }
            _ => anyhow!(line),
        }
    }

    /// `group` on `stream` (XINFO GROUPS) and the stream's counters (XINFO
    /// STREAM; redis-rs's typed reply leaves out `entries-added`).
    async fn progress(
        &self,
        stream: &str,
        group: &str,
    ) -> anyhow::Result<(StreamInfoGroup, GroupProgress)> {
        let info = self.group(stream, group).await?;
        let reply: Value = self
            .query(
                redis::cmd("XINFO").arg("STREAM").arg(stream),
                || format!("XINFO STREAM {stream}"),
                Some((stream, group)),
            )
            .await?;
        let mut progress = GroupProgress {
            last_delivered: Some(info.last_delivered_id.clone()).filter(|id| id != "0-0"),
            entries_read: info.entries_read.map(|n| n as u64),
            ..GroupProgress::default()
        };
        let mut items = array(reply).into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            match text(&key).as_deref() {
                Some("entries-added") => progress.entries_added = int(&value).map(|n| n as u64),
                Some("length") => progress.length = int(&value).unwrap_or(0) as u64,
                Some("last-generated-id") => progress.last_generated = text(&value),
                Some("first-entry") => {
                    progress.first_entry = array(value).first().and_then(text);
                }
                _ => {}
            }
        }
        Ok((info, progress))
    }

    /// `group` of `stream` as `XINFO GROUPS` reports it, or [`MissingGroup`].
    async fn group(&self, stream: &str, group: &str) -> anyhow::Result<StreamInfoGroup> {
        let groups = self.groups(stream).await?;
        groups.into_iter().find(|g| g.name == group).ok_or_else(|| {
            MissingGroup {
                stream: stream.to_string(),
                group: group.to_string(),
            }
            .into()
        })
    }

    /// The groups of `stream` as `XINFO GROUPS` reports them; none when the
    /// stream does not exist.
    async fn groups(&self, stream: &str) -> anyhow::Result<Vec<StreamInfoGroup>> {
        let cmd = redis::cmd("XINFO").arg("GROUPS").arg(stream).to_owned();
        match cmd
            .query_async::<StreamInfoGroupsReply>(&mut self.commands())
            .await
        {
            Ok(reply) => Ok(reply.groups),
            // Redis's words for a missing key: its reply is a plain `ERR no
            // such key`, with no code of its own to match.
            Err(e) if e.code() == Some("ERR") && e.detail() == Some("no such key") => {
                Ok(Vec::new())
            }
            Err(e) => Err(self.error(e, format!("XINFO GROUPS {stream}"), None)),
        }
    }

    /// The server's address, without credentials.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A connection to run commands on, for tools and tests: on a
    /// cluster, each command goes to the master of its key's slot.
    pub fn commands(&self) -> Connection {
        match &self.target {
            Target::Server { commands, .. } => Connection::Server((**commands.load()).clone()),
            Target::Cluster { commands, .. } => Connection::Cluster(commands.clone()),
        }
    }

    fn max_len(&self, stream: &str) -> u64 {
        self.trimming
            .per_stream
            .get(stream)
            .copied()
            .unwrap_or(self.trimming.max_len)
    }

    /// The delivery counters of entries pending for `consumer`.
    async fn delivery_counts(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        ids: &[String],
    ) -> anyhow::Result<HashMap<String, u32>> {
        let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
            return Ok(HashMap::new());
        };
        let reply: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg(first)
            .arg(last)
            .arg(ids.len() * 2 + 10)
            .arg(consumer)
            .query_async(&mut self.commands())
            .await
            .map_err(|e| {
                self.error(
                    e,
                    format!("XPENDING {stream} {group}"),
                    Some((stream, group)),
                )
            })?;
        let mut counts = HashMap::new();
        for row in array(reply) {
            let row = array(row);
            if let (Some(id), Some(count)) = (row.first().and_then(text), row.get(3).and_then(int))
            {
                counts.insert(id, count as u32);
            }
        }
        Ok(counts)
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn append(&self, entries: Vec<Append>) -> anyhow::Result<Vec<String>> {
        let xadd = |e: &Append| {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&e.stream).arg("MAXLEN");
            if self.trimming.approximate {
                cmd.arg("~");
            }
            cmd.arg(self.max_len(&e.stream)).arg("*");
            for (field, value) in &e.fields {
                cmd.arg(field).arg(value);
            }
            cmd
        };
        let xadd = &xadd;
        // One pipeline per slot (a cluster routes a pipeline whole), sent
        // at once; each stream's entries stay in order within theirs.
        let by_slot = self.by_slot(entries.iter().map(|e| e.stream.as_str()));
        let (several, entries_ref) = (by_slot.len() > 1, &entries);
        let pipelines = by_slot.iter().map(|(slot, _)| async move {
            let entries = entries_ref;
            let mut pipe = redis::pipe();
            let mut positions = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                if several && slots::slot_of(&e.stream) != *slot {
                    continue;
                }
                positions.push(i);
                pipe.add_command(xadd(e));
            }
            if !self.is_cluster() {
                let ids: Vec<String> = pipe
                    .query_async(&mut self.commands())
                    .await
                    .map_err(|e| self.error(e, "XADD".into(), None))?;
                return anyhow::Ok(positions.into_iter().zip(ids).collect::<Vec<_>>());
            }
            // A cluster answers a pipeline to a slot that moved (or is
            // moving) with MOVED or ASK, which redis-rs follows only for
            // single commands. As MULTI/EXEC the pipeline applies whole or
            // not at all, so that it can then be sent again one command at
            // a time, in order (each stream keeps its order), none twice.
            let answer: redis::RedisResult<Vec<String>> =
                pipe.atomic().query_async(&mut self.commands()).await;
            let ids = match answer {
                Ok(ids) => ids,
                Err(e) if one_at_a_time(&e) => {
                    let mut ids = Vec::with_capacity(positions.len());
                    for &i in &positions {
                        ids.push(
                            self.query(&xadd(&entries[i]), || "XADD".into(), None)
                                .await?,
                        );
                    }
                    ids
                }
                Err(e) => return Err(self.error(e, "XADD".into(), None)),
            };
            let placed: Vec<(usize, String)> = positions.into_iter().zip(ids).collect();
            anyhow::Ok(placed)
        });
        let mut ids = vec![String::new(); entries.len()];
        for placed in futures_util::future::try_join_all(pipelines).await? {
            for (i, id) in placed {
                ids[i] = id;
            }
        }
        Ok(ids)
    }

    async fn create_group(
        &self,
        stream: &str,
        group: &str,
        start: StartFrom,
    ) -> anyhow::Result<GroupCreated> {
        // Looked up first: a Redis at maxmemory refuses XGROUP CREATE even
        // for a group that exists, and that group's consumer is exactly what
        // would drain the backlog.
        if self.groups(stream).await?.iter().any(|g| g.name == group) {
            return Ok(GroupCreated::Existed);
        }
        let (from, skipped) = match &start {
            StartFrom::New => {
                let len: u64 = self
                    .query(
                        redis::cmd("XLEN").arg(stream),
                        || format!("XLEN {stream}"),
                        None,
                    )
                    .await?;
                ("$", len)
            }
            StartFrom::Beginning => ("0", 0),
            StartFrom::After(id) => (id.as_str(), 0),
        };
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg(from)
            .arg("MKSTREAM")
            .query_async(&mut self.commands())
            .await;
        match created {
            Ok(()) => Ok(GroupCreated::Created { skipped }),
            // Another consumer created it meanwhile.
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(GroupCreated::Existed),
            Err(e) => Err(self.error(e, format!("XGROUP CREATE {stream} {group}"), None)),
        }
    }

    async fn read(
        &self,
        group: &str,
        consumer: &str,
        streams: &[String],
        count: usize,
        block: Duration,
    ) -> anyhow::Result<Vec<Delivery>> {
        let who = (group.to_string(), consumer.to_string());
        let deferred = self.deferred.lock().remove(&who);
        if let Some(e) = deferred {
            return Err(e);
        }
        // COUNT applies to each stream: share it out, so that the reply stays
        // near what the caller has room for.
        let per_stream = count.div_ceil(streams.len().max(1)).max(1);
        let mut by_slot = self.by_slot(streams.iter().map(String::as_str));
        if by_slot.len() == 1 {
            let (slot, streams) = by_slot.remove(0);
            return self
                .read_slot(group, consumer, slot, &streams, per_stream, block)
                .await;
        }
        // Streams in several slots of a cluster: a blocking read each, at
        // once; the first to answer ends the others' BLOCK (again, until
        // they answer: a wake may reach a node before its read), and every
        // answer is awaited whole, as entries are ours once Redis answers.
        let answered = tokio::sync::Notify::new();
        let reads = futures_util::future::join_all(by_slot.iter().map(|(slot, streams)| {
            let answered = &answered;
            async move {
                let read = self
                    .read_slot(group, consumer, *slot, streams, per_stream, block)
                    .await;
                answered.notify_one();
                read
            }
        }));
        tokio::pin!(reads);
        let results = tokio::select! {
            results = &mut reads => results,
            // Reads that do not wait have nothing to wake.
            _ = answered.notified(), if !block.is_zero() => {
                let wake = async {
                    loop {
                        self.wake_reader(group, consumer).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::select! {
                    results = &mut reads => results,
                    never = wake => never,
                }
            }
        };
        let mut deliveries = Vec::new();
        let mut failure = None;
        for result in results {
            match result {
                Ok(d) => deliveries.extend(d),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match failure {
            Some(e) if deliveries.is_empty() => Err(e),
            Some(e) => {
                self.deferred.lock().insert(who, e);
                Ok(deliveries)
            }
            None => Ok(deliveries),
        }
    }

    async fn ack(&self, group: &str, stream: &str, ids: &[String]) -> anyhow::Result<()> {
        let _: u64 = self
            .query(
                redis::cmd("XACK").arg(stream).arg(group).arg(ids),
                || format!("XACK {stream} {group}"),
                Some((stream, group)),
            )
            .await?;
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
        let mut claimed = Vec::new();
        let mut cursor = "0-0".to_string();
        // Follow the cursor to the end of the pending list (the Go library
        // stops after one batch), or until `count` entries are ours.
        loop {
            let reply: Value = self
                .query(
                    redis::cmd("XAUTOCLAIM")
                        .arg(stream)
                        .arg(group)
                        .arg(consumer)
                        .arg(min_idle.as_millis() as u64)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(count - claimed.len()),
                    || format!("XAUTOCLAIM {stream} {group}"),
                    Some((stream, group)),
                )
                .await?;
            let mut parts = array(reply).into_iter();
            let next = parts
                .next()
                .and_then(|v| text(&v))
                .unwrap_or_else(|| "0-0".into());
            claimed.extend(entries(parts.next().unwrap_or(Value::Nil)));
            if next == "0-0" || claimed.len() >= count {
                break;
            }
            cursor = next;
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<String> = claimed.iter().map(|e| e.id.clone()).collect();
        ids.sort_by_key(|id| parse_entry_id(id).unwrap_or_default());
        let counts = self.delivery_counts(stream, group, consumer, &ids).await?;
        Ok(claimed
            .into_iter()
            .map(|entry| Delivery {
                stream: stream.to_string(),
                deliveries: counts.get(&entry.id).copied().unwrap_or(2),
                entry,
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
        // XCLAIM to ourselves with JUSTID resets the idle time without
        // counting a delivery, but it would also take an entry another
        // consumer has reclaimed meanwhile: only this consumer's own are
        // touched, checked and claimed in one script.
        let _: i64 = self
            .query(
                redis::cmd("EVAL")
                    .arg(TOUCH_OWN)
                    .arg(1)
                    .arg(stream)
                    .arg(group)
                    .arg(consumer)
                    .arg(ids),
                || format!("keeping entries of {group} on {stream}"),
                Some((stream, group)),
            )
            .await?;
        Ok(())
    }

    async fn range(
        &self,
        stream: &str,
        from: Option<&str>,
        to: Option<&str>,
        count: usize,
    ) -> anyhow::Result<Vec<Entry>> {
        let reply: Value = self
            .query(
                redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(from.unwrap_or("-"))
                    .arg(to.unwrap_or("+"))
                    .arg("COUNT")
                    .arg(count.min(i64::MAX as usize)),
                || format!("XRANGE {stream}"),
                None,
            )
            .await?;
        Ok(entries(reply))
    }

    async fn is_marked(&self, key: &str) -> anyhow::Result<bool> {
        let exists: u64 = self
            .query(redis::cmd("EXISTS").arg(key), || "EXISTS".into(), None)
            .await?;
        Ok(exists > 0)
    }

    async fn mark(&self, key: &str, ttl: Duration) -> anyhow::Result<()> {
        let _: Value = self
            .query(
                redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64),
                || "SET NX".into(),
                None,
            )
            .await?;
        Ok(())
    }

    async fn delete(&self, stream: &str, ids: &[String]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: u64 = self
            .query(
                redis::cmd("XDEL").arg(stream).arg(ids),
                || format!("XDEL {stream}"),
                None,
            )
            .await?;
        Ok(())
    }

    async fn kv_get(&self, bucket: &str, keys: &[String]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.query(
            redis::cmd("HMGET").arg(bucket).arg(keys),
            || format!("HMGET {bucket}"),
            None,
        )
        .await
    }

    async fn kv_scan(
        &self,
        bucket: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> anyhow::Result<(Vec<String>, Option<String>)> {
        let (next, pairs): (String, Vec<Vec<u8>>) = self
            .query(
                redis::cmd("HSCAN")
                    .arg(bucket)
                    .arg(cursor.unwrap_or("0"))
                    .arg("COUNT")
                    .arg(count.max(1)),
                || format!("HSCAN {bucket}"),
                None,
            )
            .await?;
        let keys = pairs
            .into_iter()
            .step_by(2)
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect();
        Ok((keys, (next != "0").then_some(next)))
    }

    async fn commit(
        &self,
        commits: &[crate::kv::Commit],
    ) -> anyhow::Result<Vec<crate::kv::Outcome>> {
        self.commit_batch(commits).await
    }

    async fn ping(&self) -> anyhow::Result<()> {
        self.query(&redis::cmd("PING"), || "PING".into(), None)
            .await
    }

    fn reconnects(&self) -> u64 {
        self.reconnects.load(Relaxed)
    }

    fn system(&self) -> &'static str {
        "redis"
    }

    async fn backlog(&self, stream: &str, group: &str) -> anyhow::Result<u64> {
        let (info, progress) = self.progress(stream, group).await?;
        // `lag` is nil when Redis cannot tell (after deletions), and stays
        // too high after entries were trimmed before the group read them
        // (its read counter then misses them): a group given the newest
        // entry has nothing unread, and none has more than the stream holds.
        let unread = match progress.caught_up() {
            true => 0,
            false => (info.lag.unwrap_or(1) as u64).min(progress.length.max(1)),
        };
        Ok(info.pending as u64 + unread)
    }

    async fn group_progress(&self, stream: &str, group: &str) -> anyhow::Result<GroupProgress> {
        Ok(self.progress(stream, group).await?.1)
    }

    async fn forget_idle_consumers(
        &self,
        stream: &str,
        group: &str,
        idle: Duration,
        keep: &str,
    ) -> anyhow::Result<Vec<String>> {
        let reply: StreamInfoConsumersReply = self
            .query(
                redis::cmd("XINFO").arg("CONSUMERS").arg(stream).arg(group),
                || format!("XINFO CONSUMERS {stream} {group}"),
                Some((stream, group)),
            )
            .await?;
        let mut forgotten = Vec::new();
        for c in reply.consumers {
            if c.name == keep || c.pending > 0 || (c.idle as u128) <= idle.as_millis() {
                continue;
            }
            // Deleted only if it still holds nothing, atomically: it may
            // have claimed entries since XINFO answered.
            let deleted: i64 = self
                .query(
                    redis::cmd("EVAL")
                        .arg(FORGET_IF_EMPTY)
                        .arg(1)
                        .arg(stream)
                        .arg(group)
                        .arg(&c.name),
                    || format!("forgetting consumer {:?} of {group} on {stream}", c.name),
                    Some((stream, group)),
                )
                .await?;
            if deleted == 0 {
                forgotten.push(c.name);
            }
        }
        Ok(forgotten)
    }

    async fn wake_reader(&self, group: &str, consumer: &str) {
        self.unblock_readers(group, consumer).await
    }
}

/// Resets the idle time of the entries ARGV[3..] of group ARGV[1] on stream
/// KEYS[1] that consumer ARGV[2] holds; returns how many.
const TOUCH_OWN: &str = r#"
local mine = {}
for _, e in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100000, ARGV[2])) do
  mine[e[1]] = true
end
local ids = {}
for i = 3, #ARGV do
  if mine[ARGV[i]] then ids[#ids + 1] = ARGV[i] end
end
local n = #ids
if n == 0 then return 0 end
ids[n + 1] = 'JUSTID'
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
return n
"#;

/// Deletes consumer ARGV[2] of group ARGV[1] on stream KEYS[1] if it holds
/// no pending entry: returns 0 when deleted, -1 when it holds entries.
const FORGET_IF_EMPTY: &str = r#"
local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #held > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"#;

/// Whether a cluster's answer to a MULTI/EXEC pipeline calls for sending
/// its commands one at a time: a redirection (`MOVED`, `ASK`, `TRYAGAIN`,
/// which redis-rs follows for single commands only), or `EXECABORT`
/// (commands refused while queued, as a slot being moved refuses them):
/// either way nothing was applied.
fn one_at_a_time(e: &redis::RedisError) -> bool {
    e.is_cluster_error() || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort)
}
