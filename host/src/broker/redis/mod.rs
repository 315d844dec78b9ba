//! Redis Streams: how Runnel runs across processes and machines.
//!
//! Entries are written as the Go library writes them (`XADD <stream> MAXLEN ~
//! <cap> * event <json>`), consumer groups share the work, `XACK` comes after
//! the final outcome, and `XAUTOCLAIM` takes over what a dead consumer left
//! pending. Commands go through a [`ConnectionManager`], which reconnects after
//! Redis restarts or drops the connection; each blocking `XREADGROUP` gets a
//! connection of its own (`reader.rs`), because a blocked connection serves
//! nobody else, with a response timeout longer than its `BLOCK`.

mod commit;
mod connection;
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
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroup, StreamInfoGroupsReply};
use redis::{Client, ConnectionAddr, IntoConnectionInfo as _, Value};
use tokio::sync::Mutex;

use super::{
    parse_entry_id, Append, Broker, Delivery, Entry, GroupCreated, GroupProgress, MissingGroup,
    StartFrom,
};
use reader::Reader;
use replies::{array, entries, int, read_group_reply, stream_entries, text};
use slots::{Node, SlotMap};
use tls::TlsMaterial;

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

/// A blocking reader: one per group, consumer, streams read and slot of
/// those streams (0 on one server, where every key is in one place). The
/// streams are part of it because plugins may name one group on different
/// streams (a group is per stream in Redis): with a reader per group and
/// consumer, each plugin's read queued behind the others' `BLOCK`, and 100
/// such plugins drained at a fourteenth of one plugin's rate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ReaderKey {
    group: String,
    consumer: String,
    streams: Vec<String>,
    slot: u16,
}

/// A blocking reader's connection and the node it is connected to (`None`
/// on one server), shared by the reads of one consumer.
type ReaderSlot = Arc<Mutex<Option<(Option<Node>, Reader)>>>;

/// Time for a connection attempt before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for a non-blocking command's answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// A read that met `ASK` (its slot is moving between masters) waits this
/// long before it returns empty, for the next read to find the slot moved.
const MIGRATING_PAUSE: Duration = Duration::from_millis(50);

impl RedisBroker {
    /// A broker for `url` (`redis://[user:pass@]host:port[/db]`, or
    /// `rediss://` for TLS, verified against the system's roots). Only a
    /// malformed URL fails here: the connection is made by the first command
    /// and made again after Redis restarts or drops it, so that a service can
    /// start while Redis is down and consume once it answers.
    pub async fn connect(url: &str, trimming: Trimming) -> anyhow::Result<Arc<Self>> {
        RedisBroker::open(
            &Endpoint::Server(url.to_string()),
            trimming,
            &TlsFiles::default(),
        )
        .await
    }

    /// [`RedisBroker::connect`] for one server or a cluster, with the TLS
    /// settings of `rediss://` URLs (a CA, a client certificate, or no
    /// verification). Fails at once on a malformed URL, on a file that
    /// cannot be read or used, and on TLS settings for URLs that are not
    /// `rediss://`. A cluster is connected in the background, like a
    /// server: its seeds need not answer yet.
    pub async fn open(
        endpoint: &Endpoint,
        trimming: Trimming,
        tls: &TlsFiles,
    ) -> anyhow::Result<Arc<Self>> {
        let urls = endpoint.urls();
        let address = match endpoint {
            Endpoint::Server(url) => redact(url),
            Endpoint::Cluster(seeds) => format!(
                "cluster {}",
                seeds
                    .iter()
                    .map(|s| redact(s))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        anyhow::ensure!(
            !urls.is_empty(),
            "a Redis Cluster needs at least one seed node"
        );
        let mut infos = Vec::with_capacity(urls.len());
        for url in urls {
            infos.push(
                url.as_str()
                    .into_connection_info()
                    .map_err(|e| anyhow!("redis URL {}: {e}", redact(url)))?,
            );
        }
        let tls_urls = infos
            .iter()
            .filter(|i| matches!(i.addr(), ConnectionAddr::TcpTls { .. }))
            .count();
        anyhow::ensure!(
            tls_urls == 0 || tls_urls == infos.len(),
            "redis at {address}: either every seed is rediss:// or none"
        );
        let material = match tls_urls {
            0 if *tls != TlsFiles::default() => anyhow::bail!(
                "redis at {address}: TLS settings are given, but the URL is not rediss://"
            ),
            0 => None,
            _ => {
                tls::install_crypto_provider();
                let mut material = TlsMaterial::load(tls)?;
                // `rediss://...#insecure` asks the same as the config.
                material.insecure |= infos
                    .iter()
                    .any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { insecure: true, .. }));
                if material.insecure {
                    tracing::warn!("TLS to redis at {address} does not verify the server's certificate (insecure_skip_verify): anyone on the path can read and change the traffic");
                }
                Some(material)
            }
        };
        let reader_tls = material.as_ref().map(|m| m.connector()).transpose()?;
        let target = match endpoint {
            Endpoint::Server(_) => {
                let info = infos.remove(0);
                let client = match (&material, info.addr().clone()) {
                    (Some(material), ConnectionAddr::TcpTls { host, port, .. }) => {
                        let info = info.set_addr(ConnectionAddr::TcpTls {
                            host,
                            port,
                            insecure: material.insecure,
                            tls_params: None,
                        });
                        Client::build_with_tls(info, material.redis_certificates())
                            .map_err(|e| anyhow!("redis at {address}: TLS: {e}"))?
                    }
                    _ => Client::open(info).map_err(|e| anyhow!("redis URL {address}: {e}"))?,
                };
                let commands = manager(&client).map_err(|e| anyhow!("redis at {address}: {e}"))?;
                Target::Server {
                    client,
                    commands: arc_swap::ArcSwap::from_pointee(commands),
                }
            }
            Endpoint::Cluster(_) => {
                let seed = infos[0].clone();
                let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(4);
                if let Some(material) = &material {
                    builder = builder
                        .certs(material.redis_certificates())
                        .danger_accept_invalid_hostnames(material.insecure);
                }
                let client = builder
                    .build()
                    .map_err(|e| anyhow!("redis at {address}: {e}"))?;
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT);
                Target::Cluster {
                    commands: client.get_pending_async_connection_with_config(config),
                    seed,
                    slots: Default::default(),
                    stale: std::sync::atomic::AtomicBool::new(true),
                }
            }
        };
        Ok(Arc::new(RedisBroker {
            target,
            reader_tls,
            address,
            readers: Default::default(),
            reader_ids: Default::default(),
            deferred: Default::default(),
            trimming,
            reconnects: AtomicU64::new(0),
        }))
    }

    /// The URL of every master (one: the server), with the seed's
    /// credentials: where a tool measures what the backend costs.
    pub async fn masters(&self) -> anyhow::Result<Vec<String>> {
        let Target::Cluster { slots, seed, .. } = &self.target else {
            let Target::Server { client, .. } = &self.target else {
                unreachable!()
            };
            return Ok(vec![url_of(client.get_connection_info(), None)]);
        };
        self.node_for(0).await?;
        let masters = slots.lock().masters();
        Ok(masters.iter().map(|n| url_of(seed, Some(n))).collect())
    }

    /// `<prefix>-<n>` names, one served by each master (one name on a
    /// server), for spreading work over a cluster.
    pub async fn one_key_per_master(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let wanted = self.masters().await?.len();
        let mut names = Vec::new();
        let mut served = Vec::new();
        for i in 0..100_000 {
            let name = format!("{prefix}-{i}");
            let node = self.node_for(slots::slot_of(&name)).await?;
            if !served.contains(&node) {
                served.push(node);
                names.push(name);
            }
            if names.len() == wanted {
                break;
            }
        }
        Ok(names)
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

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

    /// The connection slot of one blocking reader.
    fn reader(&self, key: &ReaderKey) -> ReaderSlot {
        self.readers.lock().entry(key.clone()).or_default().clone()
    }

    /// `keys` grouped by hash slot, each group in the order given and the
    /// groups in order of first appearance; one group (slot 0) on a server.
    fn by_slot<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<(u16, Vec<String>)> {
        let mut groups: Vec<(u16, Vec<String>)> = Vec::new();
        for key in keys {
            let slot = match self.target {
                Target::Server { .. } => 0,
                Target::Cluster { .. } => slots::slot_of(key),
            };
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, keys)) => keys.push(key.to_string()),
                None => groups.push((slot, vec![key.to_string()])),
            }
        }
        groups
    }

    /// The master serving `slot`, from the slot map (loaded again first
    /// when a reader found it out of date); `None` on a server.
    async fn node_for(&self, slot: u16) -> anyhow::Result<Option<Node>> {
        let Target::Cluster {
            commands,
            slots,
            stale,
            seed,
        } = &self.target
        else {
            return Ok(None);
        };
        let known = || slots.lock().node(slot).cloned();
        if !stale.load(Relaxed) {
            if let Some(node) = known() {
                return Ok(Some(node));
            }
        }
        let seed_host = match seed.addr() {
            ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
            _ => String::new(),
        };
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut commands.clone())
            .await
            .map_err(|e| anyhow!("CLUSTER SLOTS on redis at {}: {e}", self.address))?;
        let map = SlotMap::from_reply(&reply, &seed_host)?;
        *slots.lock() = map;
        stale.store(false, Relaxed);
        known().map(Some).ok_or_else(|| {
            anyhow!(
                "redis at {}: no master serves slot {slot} (is the cluster down?)",
                self.address
            )
        })
    }

    /// The slot map is out of date: `MOVED` says where `slot` went now,
    /// and the whole map is loaded again before the next read.
    fn slot_moved(&self, slot: u16, node: Option<Node>) {
        if let Target::Cluster { slots, stale, .. } = &self.target {
            if let Some(node) = node {
                slots.lock().moved(slot, node);
            }
            stale.store(true, Relaxed);
        }
    }

    /// One `XREADGROUP` of streams in one slot, on the blocking reader of
    /// `group`, `consumer` and that slot, connected to the slot's master.
    /// A `MOVED` reply updates the slot map and reads again where the
    /// slot went; an `ASK` (the slot is being moved) returns nothing after
    /// a short pause, the entries staying on the stream for the next read.
    async fn read_slot(
        &self,
        group: &str,
        consumer: &str,
        slot: u16,
        streams: &[String],
        per_stream: usize,
        block: Duration,
    ) -> anyhow::Result<Vec<Delivery>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(per_stream);
        // BLOCK 0 would wait forever: a read that must not wait has none.
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(streams);
        for _ in streams {
            cmd.arg(">");
        }
        if block.is_zero() {
            // Nothing to wait for: the multiplexed connection (routed, on a
            // cluster) serves, rather than a connection of its own per
            // slot and set of streams (the replay streams' read, say).
            let reply: Value = self
                .query(&cmd, || "XREADGROUP".into(), Some((&streams[0], group)))
                .await?;
            return Ok(stream_entries(reply));
        }
        let key = ReaderKey {
            group: group.to_string(),
            consumer: consumer.to_string(),
            streams: streams.to_vec(),
            slot,
        };
        let slot_conn = self.reader(&key);
        let mut slot_conn = slot_conn.lock().await;
        let mut redirections = 0;
        loop {
            let node = self.node_for(slot).await?;
            // Taken out for the call and put back only after a whole answer:
            // a failed or abandoned call may leave half an answer on the
            // socket, so that connection is dropped and the next read opens
            // a new one. A connection to a node that no longer serves the
            // slot is dropped too.
            let mut conn = match slot_conn.take() {
                Some((at, conn)) if at == node => conn,
                _ => {
                    let info = match (&self.target, &node) {
                        (Target::Cluster { seed, .. }, Some(node)) => {
                            seed.clone().set_addr(match seed.addr() {
                                ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                                    host: node.host.clone(),
                                    port: node.port,
                                    insecure: *insecure,
                                    tls_params: None,
                                },
                                _ => ConnectionAddr::Tcp(node.host.clone(), node.port),
                            })
                        }
                        (Target::Server { client, .. }, _) => client.get_connection_info().clone(),
                        (Target::Cluster { .. }, None) => unreachable!("a cluster slot has a node"),
                    };
                    let where_ = node
                        .as_ref()
                        .map_or(self.address.clone(), |n| n.to_string());
                    let conn = Reader::connect(&info, self.reader_tls.as_ref(), CONNECT_TIMEOUT)
                        .await
                        .map_err(|e| {
                            self.slot_moved(slot, None);
                            anyhow!("cannot connect to redis at {where_}: {e:#}")
                        })?;
                    if let Some(id) = conn.client_id() {
                        self.reader_ids
                            .lock()
                            .insert(key.clone(), (node.clone(), id));
                    }
                    conn
                }
            };
            let reply = conn
                .call(&cmd, block + RESPONSE_TIMEOUT, read_group_reply)
                .await;
            let words = match reply {
                Ok(Ok(deliveries)) => {
                    *slot_conn = Some((node, conn));
                    return Ok(deliveries);
                }
                Ok(Err(words)) => {
                    *slot_conn = Some((node, conn));
                    words
                }
                Err(e) => {
                    self.reconnects.fetch_add(1, Relaxed);
                    self.slot_moved(slot, None);
                    // That connection is gone: its id may name another client
                    // after a restart, which a shutdown must not unblock.
                    self.reader_ids.lock().remove(&key);
                    return Err(anyhow!("XREADGROUP on redis at {}: {e:#}", self.address));
                }
            };
            match slots::redirection(&words) {
                Some((false, moved, to)) if redirections < 3 => {
                    redirections += 1;
                    self.slot_moved(moved, Some(to));
                    continue;
                }
                Some((true, _, _)) => {
                    tokio::time::sleep(MIGRATING_PAUSE.min(block)).await;
                    return Ok(Vec::new());
                }
                _ => {}
            }
            let line = format!("XREADGROUP on redis at {}: {words}", self.address);
            return Err(match words.strip_prefix("NOGROUP") {
                Some(rest) => anyhow::Error::new(MissingGroup {
                    stream: quoted_key(rest).unwrap_or_else(|| streams.join(", ")),
                    group: group.to_string(),
                })
                .context(line),
                None => anyhow!(line),
            });
        }
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
        let blocked: Vec<(Option<Node>, i64)> = self
            .reader_ids
            .lock()
            .iter()
            .filter(|(key, _)| key.group == group && key.consumer == consumer)
            .map(|(_, at)| at.clone())
            .collect();
        for (node, id) in blocked {
            // The default mode (TIMEOUT) answers the blocked XREADGROUP as if
            // its BLOCK had run out: an empty reply, whole. A client id is
            // the node's own, so the command goes to that node.
            let unblock = redis::cmd("CLIENT").arg("UNBLOCK").arg(id).to_owned();
            let unblocked = match (&self.target, node) {
                (Target::Cluster { commands, .. }, Some(node)) => {
                    let at = SingleNodeRoutingInfo::ByAddress {
                        host: node.host,
                        port: node.port,
                    };
                    commands
                        .clone()
                        .route_command(unblock, RoutingInfo::SingleNode(at))
                        .await
                        .map(drop)
                        .map_err(|e| anyhow!("{e}"))
                }
                _ => self
                    .query::<u64>(&unblock, || "CLIENT UNBLOCK".into(), None)
                    .await
                    .map(drop),
            };
            if let Err(e) = unblocked {
                tracing::debug!("waking the reader of {group}: {e:#}");
            }
        }
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

/// The first `'quoted'` word of a Redis error: the key `NOGROUP` names.
fn quoted_key(words: &str) -> Option<String> {
    let start = words.find('\'')? + 1;
    let len = words[start..].find('\'')?;
    Some(words[start..start + len].to_string())
}

/// `redis://[user:password@]host:port` for `info`, at `node` instead of its
/// own address when given.
fn url_of(info: &redis::ConnectionInfo, node: Option<&Node>) -> String {
    let (host, port) = match (node, info.addr()) {
        (Some(n), _) => (n.host.clone(), n.port),
        (
            None,
            ConnectionAddr::Tcp(h, p)
            | ConnectionAddr::TcpTls {
                host: h, port: p, ..
            },
        ) => (h.clone(), *p),
        (None, _) => ("127.0.0.1".to_string(), 6379),
    };
    let settings = info.redis_settings();
    let auth = match (settings.username(), settings.password()) {
        (Some(user), Some(password)) => format!("{user}:{password}@"),
        (None, Some(password)) => format!(":{password}@"),
        _ => String::new(),
    };
    let scheme = match info.addr() {
        ConnectionAddr::TcpTls { .. } => "rediss",
        _ => "redis",
    };
    format!("{scheme}://{auth}{host}:{port}")
}

/// The command connection of `client`, connected by its first command.
fn manager(client: &Client) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// `redis://user:secret@host` → `redis://user:***@host`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let auth = &url[scheme + 3..at];
            match auth.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
