//! Where keys live on a Redis Cluster: the slot map the blocking readers
//! follow (the command connection routes by itself), and the masters a
//! tool spreads its work over. On one server every key is in slot 0.

use std::sync::atomic::Ordering::Relaxed;

use anyhow::anyhow;
use redis::{ConnectionAddr, Value};

use super::open::url_of;
use super::slots::{self, Node, SlotMap};
use super::{RedisBroker, Target};

impl RedisBroker {
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

    /// `keys` grouped by hash slot, each group in the order given and the
    /// groups in order of first appearance; one group (slot 0) on a server.
    pub(super) fn by_slot<'k>(
        &self,
        keys: impl Iterator<Item = &'k str>,
    ) -> Vec<(u16, Vec<String>)> {
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
    pub(super) async fn node_for(&self, slot: u16) -> anyhow::Result<Option<Node>> {
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
    pub(super) fn slot_moved(&self, slot: u16, node: Option<Node>) {
        if let Target::Cluster { slots, stale, .. } = &self.target {
            if let Some(node) = node {
                slots.lock().moved(slot, node);
            }
            stale.store(true, Relaxed);
        }
    }
}
