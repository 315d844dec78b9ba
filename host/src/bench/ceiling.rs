//! The Redis ceiling each round's ratios are against: what
//! `redis-benchmark` reaches on the same server at the same moment.

use super::{cpu, ORDER};
use crate::event::Event;

/// The ceiling's row name in the Redis table.
pub(super) fn ceiling_name(payload_bytes: Option<usize>) -> String {
    match payload_bytes {
        None => "redis-benchmark -P 16 XADD".into(),
        Some(n) => format!("redis-benchmark -P 16 SET -d {n}"),
    }
}

/// Requests per second that `redis-benchmark` reaches with 16-deep
/// pipelining on the same server, and the server's CPU per request
/// meanwhile: XADDs of the usual event (the publish ceiling), or with
/// `payload_bytes`, SETs of values that size (a command line cannot carry a
/// large XADD; `-d` makes the value), as many as make 512 MiB (at least
/// 1000).
pub(super) async fn redis_benchmark(
    url: &str,
    payload_bytes: Option<usize>,
) -> anyhow::Result<(f64, f64)> {
    let requests = match payload_bytes {
        None => 200_000,
        Some(n) => ((512usize << 20) / n.max(1)).clamp(1_000, 200_000),
    };
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info = client.get_connection_info().clone();
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        other => anyhow::bail!("redis-benchmark needs a TCP address, not {other:?}"),
    };
    let key = format!("runnel-bench-xadd-{}", uuid::Uuid::new_v4().simple());
    let envelope = String::from_utf8(Event::new("order.created", ORDER.to_vec()).to_json())?;
    let command: Vec<String> = match payload_bytes {
        None => [
            "XADD", &key, "MAXLEN", "~", "1000000", "*", "event", &envelope,
        ]
        .map(String::from)
        .to_vec(),
        Some(n) => vec!["-t".into(), "set".into(), "-d".into(), n.to_string()],
    };
    let redis_before = cpu::redis(&mut conn).await?;
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-h",
            &host,
            "-p",
            &port.to_string(),
            "-P",
            "16",
            "-n",
            &requests.to_string(),
            "-q",
        ])
        .args(&command)
        .output()
        .map_err(|e| anyhow::anyhow!("running redis-benchmark: {e}"))?;
    let redis_us = cpu::micros_each(
        cpu::redis(&mut conn).await?.saturating_sub(redis_before),
        requests,
    );
    let _ = std::process::Command::new("redis-cli")
        .args(["-h", &host, "-p", &port.to_string(), "DEL", &key])
        .args(["key:__rand_int__", "key:000000000000"])
        .output();
    let text = String::from_utf8_lossy(&out.stdout);
    // "XADD ...: 840336.12 requests per second, p50=..."
    let rate = text
        .split(':')
        .next_back()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .or_else(|| {
            text.split_whitespace()
                .zip(text.split_whitespace().skip(1))
                .find(|(_, w)| *w == "requests")
                .and_then(|(n, _)| n.parse().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("cannot read redis-benchmark's output: {text}"))?;
    Ok((rate, redis_us))
}
