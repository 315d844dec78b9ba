//! `XREADGROUP` with `BLOCK`, on connections of its own: a blocked
//! connection serves nobody else, so each reader (group, consumer, streams
//! and slot) has one, and `CLIENT UNBLOCK` ends its wait early.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionAddr, Value};
use tokio::sync::Mutex;

use super::reader::Reader;
use super::replies::{read_group_reply, stream_entries};
use super::slots::{self, Node};
use super::{RedisBroker, Target, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::broker::{Delivery, MissingGroup};

/// A blocking reader: one per group, consumer, streams read and slot of
/// those streams (0 on one server, where every key is in one place). The
/// streams are part of it because plugins may name one group on different
/// streams (a group is per stream in Redis): with a reader per group and
/// consumer, each plugin's read queued behind the others' `BLOCK`, and 100
/// such plugins drained at a fourteenth of one plugin's rate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ReaderKey {
    group: String,
    consumer: String,
    streams: Vec<String>,
    slot: u16,
}

/// A blocking reader's connection and the node it is connected to (`None`
/// on one server), shared by the reads of one consumer.
pub(super) type ReaderSlot = Arc<Mutex<Option<(Option<Node>, Reader)>>>;

/// A read that met `ASK` (its slot is moving between masters) waits this
/// long before it returns empty, for the next read to find the slot moved.
const MIGRATING_PAUSE: Duration = Duration::from_millis(50);

impl RedisBroker {
    /// The connection slot of one blocking reader.
    fn reader(&self, key: &ReaderKey) -> ReaderSlot {
        self.readers.lock().entry(key.clone()).or_default().clone()
    }

    /// One `XREADGROUP` of streams in one slot, on the blocking reader of
    /// `group`, `consumer` and that slot, connected to the slot's master.
    /// A `MOVED` reply updates the slot map and reads again where the
    /// slot went; an `ASK` (the slot is being moved) returns nothing after
    /// a short pause, the entries staying on the stream for the next read.
    pub(super) async fn read_slot(
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

    /// Ends the blocked reads of `group` and `consumer` at once, with an
    /// empty reply ([`crate::broker::Broker::wake_reader`]).
    pub(super) async fn unblock_readers(&self, group: &str, consumer: &str) {
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

/// The first `'quoted'` word of a Redis error: the key `NOGROUP` names.
fn quoted_key(words: &str) -> Option<String> {
    let start = words.find('\'')? + 1;
    let len = words[start..].find('\'')?;
    Some(words[start..start + len].to_string())
}
