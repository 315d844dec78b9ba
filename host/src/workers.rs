//! How many worker threads the async runtime gets when `--threads` is not
//! given.
//!
//! A Redis server is one busy thread whenever the host is busy. When it runs
//! on the same machine, a host with a worker per core competes with it for
//! every core; leaving it one is faster. Measured on the 2-core development
//! machine with Redis beside the host (BENCHMARKS.md, "Session 9: worker
//! threads"): the wasm no-op drained Redis faster with one worker than with
//! two. So the default is a worker per core, one fewer when a Redis server
//! the command uses is on this machine (a loopback or Unix-socket URL), and
//! never fewer than one. Where Redis runs elsewhere, or on the in-memory
//! backend, every core works for the host.

use redis::{ConnectionAddr, IntoConnectionInfo};

/// Worker threads for `cores` cores when the command talks to the Redis
/// servers at `urls` (`redis://`, `rediss://`, `redis+unix://` URLs; empty
/// for the in-memory backend).
pub fn default_workers<'a>(cores: usize, urls: impl IntoIterator<Item = &'a str>) -> usize {
    let local = urls.into_iter().any(is_on_this_machine);
    match local {
        true => cores.saturating_sub(1).max(1),
        false => cores.max(1),
    }
}

/// Whether a Redis URL names a server on this machine: a loopback address,
/// `localhost`, or a Unix socket. A URL that does not parse is not (the
/// command reports it when it connects).
pub fn is_on_this_machine(url: &str) -> bool {
    let Ok(info) = url.into_connection_info() else {
        return false;
    };
    let host = match info.addr() {
        ConnectionAddr::Tcp(host, _) => host.as_str(),
        ConnectionAddr::TcpTls { host, .. } => host.as_str(),
        ConnectionAddr::Unix(_) => return true,
        _ => return false,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One line for the log saying what was chosen and why, when it differs
/// from a worker per core.
pub fn explain(cores: usize, workers: usize) -> Option<String> {
    (workers != cores).then(|| {
        format!(
            "{workers} worker thread(s) on {cores} cores: Redis runs on this machine, so one core is left to it (--threads to choose)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_redis_is_left_a_core() {
        assert_eq!(default_workers(2, ["redis://127.0.0.1:6379"]), 1);
        assert_eq!(default_workers(8, ["redis://localhost/2"]), 7);
        assert_eq!(default_workers(4, ["redis+unix:///run/redis.sock"]), 3);
        assert_eq!(default_workers(1, ["redis://127.0.0.1"]), 1);
        assert_eq!(default_workers(4, ["rediss://[::1]:6380"]), 3);
    }

    #[test]
    fn a_remote_redis_or_memory_gets_every_core() {
        assert_eq!(default_workers(2, ["redis://10.0.0.7:6379"]), 2);
        assert_eq!(default_workers(2, ["redis://cache.internal:6379"]), 2);
        assert_eq!(default_workers(2, []), 2);
        assert_eq!(default_workers(2, ["not a url"]), 2);
        // One local seed of a cluster is enough: that node shares the cores.
        assert_eq!(
            default_workers(4, ["redis://10.0.0.1:7000", "redis://127.0.0.1:7001"]),
            3
        );
    }
}
