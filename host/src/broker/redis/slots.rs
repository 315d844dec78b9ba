//! Redis Cluster's key space: which hash slot a key lives in, and which
//! master serves a slot.
//!
//! Commands that name keys are routed by redis-rs's cluster connection; the
//! blocking readers (`reader.rs`) are our own connections and route
//! themselves, with the slot map kept here. The rules come from the Redis
//! Cluster specification: a key's slot is CRC16 (XMODEM) of the key, or of
//! its hash tag (the text between the first `{` and the next `}`, when not
//! empty), modulo 16384; commands with several keys need them in one slot.

/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The hash tag of `key`: what sits between its first `{` and the next
/// `}`, if that is not empty. Keys with the same tag share a slot.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    Some(&key[open + 1..open + 1 + len]).filter(|tag| !tag.is_empty())
}

/// The hash slot of `key`.
pub fn slot_of(key: &str) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed.as_bytes()) % SLOTS
}

/// `{tag}` of `key`, for names Runnel derives from it (a mark, a bucket) so
/// that they land in the key's slot; empty for a key without a tag.
pub fn tag_prefix(key: &str) -> String {
    hash_tag(key)
        .map(|t| format!("{{{t}}}"))
        .unwrap_or_default()
}

/// `{tag}` when every one of `keys` (at least one) has the hash tag `tag`,
/// else empty: the prefix that puts a name Runnel derives for all of them
/// (a plugin's buckets) in their one slot.
pub fn common_tag(keys: &[String]) -> String {
    let mut tags = keys.iter().map(|k| hash_tag(k));
    match tags.next() {
        Some(Some(first)) if tags.all(|t| t == Some(first)) => format!("{{{first}}}"),
        _ => String::new(),
    }
}

/// A master: where a range of slots is served.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Which master serves each slot, as `CLUSTER SLOTS` told it last.
#[derive(Clone, Debug, Default)]
pub struct SlotMap {
    /// `(first, last, master)`, inclusive, sorted by `first`.
    ranges: Vec<(u16, u16, Node)>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply: per range `[first, last, [host, port,
    /// id, ...], replicas...]`. An empty host means the node the reply
    /// came from (`seed`), as Redis says for a node that does not know its
    /// own address.
    pub fn from_reply(reply: &redis::Value, seed: &str) -> anyhow::Result<SlotMap> {
        use redis::Value;
        let bad = || anyhow::anyhow!("CLUSTER SLOTS: unexpected reply {reply:?}");
        let Value::Array(rows) = reply else {
            return Err(bad());
        };
        let mut ranges = Vec::with_capacity(rows.len());
        for row in rows {
            let Value::Array(parts) = row else {
                return Err(bad());
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(bad());
            };
            let host = match master.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => return Err(bad()),
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return Err(bad());
            };
            let host = if host.is_empty() || host == "?" {
                seed.to_string()
            } else {
                host
            };
            ranges.push((
                *first as u16,
                *last as u16,
                Node {
                    host,
                    port: *port as u16,
                },
            ));
        }
        ranges.sort_by_key(|r| r.0);
        Ok(SlotMap { ranges })
    }

    /// The master serving `slot`, if the map covers it.
    pub fn node(&self, slot: u16) -> Option<&Node> {
        let i = self.ranges.partition_point(|r| r.0 <= slot);
        let (first, last, node) = self.ranges.get(i.checked_sub(1)?)?;
        (*first..=*last).contains(&slot).then_some(node)
    }

    /// Serves `slot` from `node` from now on, as a `MOVED` reply says,
    /// until the next full refresh.
    pub fn moved(&mut self, slot: u16, node: Node) {
        if let Some(i) = self.ranges.iter().position(|r| (r.0..=r.1).contains(&slot)) {
            let (first, last, old) = self.ranges.remove(i);
            let mut split = Vec::new();
            if first < slot {
                split.push((first, slot - 1, old.clone()));
            }
            split.push((slot, slot, node));
            if slot < last {
                split.push((slot + 1, last, old));
            }
            self.ranges.splice(i..i, split);
        } else {
            self.ranges.push((slot, slot, node));
            self.ranges.sort_by_key(|r| r.0);
        }
    }

    /// Masters, each once.
    pub fn masters(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = Vec::new();
        for (_, _, n) in &self.ranges {
            if !nodes.contains(n) {
                nodes.push(n.clone());
            }
        }
        nodes
    }
}

/// A `MOVED <slot> <host>:<port>` or `ASK <slot> <host>:<port>` error, in
/// Redis's words: whether it is an `ASK`, the slot and where to go.
pub fn redirection(words: &str) -> Option<(bool, u16, Node)> {
    let mut parts = words.split_whitespace();
    let ask = match parts.next()? {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    let slot = parts.next()?.parse().ok()?;
    let (host, port) = parts.next()?.rsplit_once(':')?;
    Some((
        ask,
        slot,
        Node {
            host: host.to_string(),
            port: port.parse().ok()?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn slots_agree_with_redis_rs_routing() {
        for key in [
            "orders",
            "{orders}.dead",
            "a{}b",
            "x{y",
            "{orders}",
            "é",
            "",
        ] {
            assert_eq!(
                Slot::new(slot_of(key)),
                Some(Slot::for_key(key)),
                "slot of {key:?}"
            );
        }
        // The specification's examples.
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(hash_tag("foo{}{bar}"), None);
        assert_eq!(hash_tag("foo{{bar}}zap"), Some("{bar"));
        assert_eq!(tag_prefix("{orders}.paid"), "{orders}");
        assert_eq!(tag_prefix("orders"), "");
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(common_tag(&keys(&["{o}.a", "{o}.b"])), "{o}");
        assert_eq!(common_tag(&keys(&["{o}.a", "b"])), "");
        assert_eq!(common_tag(&keys(&[])), "");
    }

    #[test]
    fn moved_slots_split_their_range() {
        let node = |p| Node {
            host: "h".into(),
            port: p,
        };
        let mut map = SlotMap {
            ranges: vec![(0, 99, node(1)), (100, 199, node(2))],
        };
        map.moved(50, node(2));
        assert_eq!(map.node(49), Some(&node(1)));
        assert_eq!(map.node(50), Some(&node(2)));
        assert_eq!(map.node(51), Some(&node(1)));
        assert_eq!(map.node(150), Some(&node(2)));
        assert_eq!(map.node(200), None);
        assert_eq!(map.masters(), vec![node(1), node(2)]);
        assert_eq!(
            redirection("MOVED 3999 127.0.0.1:6381"),
            Some((false, 3999, node_at("127.0.0.1", 6381)))
        );
        assert_eq!(
            redirection("ASK 1 ::1:7000"),
            Some((true, 1, node_at("::1", 7000)))
        );
        assert_eq!(redirection("NOGROUP x"), None);
    }

    fn node_at(host: &str, port: u16) -> Node {
        Node {
            host: host.into(),
            port,
        }
    }
}
