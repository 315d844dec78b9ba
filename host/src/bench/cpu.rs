//! CPU time spent by this process and by the Redis server over a run, so
//! that a Redis figure says which side ran out of CPU, not only how fast the
//! pair went.

use std::time::Duration;

/// User plus system time of this process so far (10 ms resolution, which is
/// below 1% of a benchmark round).
pub fn process() -> Duration {
    of_process("self")
}

/// User plus system time of process `pid` (or `self`) so far, 0 if it
/// cannot be read.
pub fn of_process(pid: &str) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is in parentheses and may
            // hold spaces: utime and stime are the 12th and 13th of them.
            let rest = &stat[stat.rfind(')')? + 2..];
            let mut fields = rest.split_whitespace().skip(11);
            let user: u64 = fields.next()?.parse().ok()?;
            let system: u64 = fields.next()?.parse().ok()?;
            Some(user + system)
        })
        .unwrap_or(0);
    // Linux reports in USER_HZ, which is 100 on every architecture it runs.
    Duration::from_millis(ticks * 10)
}

/// User plus system time of the Redis server so far, from `INFO cpu`.
pub async fn redis(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Duration> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let seconds: f64 = info
        .lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(key, _)| *key == "used_cpu_user" || *key == "used_cpu_sys")
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum();
    Ok(Duration::from_secs_f64(seconds))
}

/// CPU per unit of work, in microseconds.
pub fn micros_each(cpu: Duration, count: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / count.max(1) as f64
}

/// [`redis`] summed over several servers (a cluster's masters).
pub async fn redis_all(
    conns: &mut [redis::aio::MultiplexedConnection],
) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for conn in conns {
        total += redis(conn).await?;
    }
    Ok(total)
}
