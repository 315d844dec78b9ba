//! This process's resident memory, from `/proc/self`: now, and the peak
//! since [`reset_peak`], so that a case's peak is its own and not the
//! bench's so far.

/// Resident set size now, in KiB (0 if `/proc` cannot be read).
pub fn current_kib() -> u64 {
    status_kib("VmRSS:")
}

/// The largest resident set size since the last [`reset_peak`] (or since
/// the process started), in KiB.
pub fn peak_kib() -> u64 {
    status_kib("VmHWM:")
}

/// Starts the peak over from the current size: writing `5` to
/// `clear_refs` (Linux 4.0 and later). Fails where that is not allowed, and
/// then [`peak_kib`] means the peak since start.
pub fn reset_peak() -> std::io::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
}

fn status_kib(field: &str) -> u64 {
    field_kib(
        &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
        field,
    )
}

/// A `… kB` field of a `/proc/<pid>/status` text, in KiB (0 if absent).
pub fn field_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
