//! Where the broker's commands go: one Redis server or a Redis Cluster.
//!
//! Both are one [`Connection`] to the rest of the broker, so that every
//! command is written once: on a cluster, redis-rs routes each command by
//! its key's slot, follows `MOVED` and `ASK` redirections and learns the
//! new topology after a failover. What it cannot route is ours: blocking
//! reads ([`super::reader`], by [`super::slots`]) and batches whose keys
//! fall in several slots (split per slot by the broker).

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Which Redis the broker talks to, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// One server: `redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS.
    Server(String),
    /// A Redis Cluster, named by some of its nodes (seeds, same URL form,
    /// no database): the rest of the cluster is learnt from them.
    Cluster(Vec<String>),
}

impl Endpoint {
    /// The URLs it names.
    pub fn urls(&self) -> &[String] {
        match self {
            Endpoint::Server(url) => std::slice::from_ref(url),
            Endpoint::Cluster(seeds) => seeds,
        }
    }

    /// Whether every URL asks for TLS.
    pub fn is_tls(&self) -> bool {
        self.urls().iter().all(|u| u.starts_with("rediss://"))
    }
}

/// A connection for non-blocking commands, cheap to clone (both kinds are
/// handles on a shared, multiplexed connection).
#[derive(Clone)]
pub enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Server(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Server(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}
