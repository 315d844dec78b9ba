//! `runnel test`: a plugin author's harness. Runs a component over events
//! from a file, in process, with no backend, and prints per event what
//! happened: the verdict of each attempt, what `handle-error` was told, the
//! logs and the events it would emit. With `--expect` the report is compared
//! with a file and any difference fails, so a plugin's behaviour can be
//! pinned in its own CI the way the Go seed's `pubsubtest` pins a handler's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::commands::input::InputEvent;
use crate::handler::{Failure, Handler, LogLine, Routed};
use crate::plugin::{PluginSettings, Standalone};

/// Writes to keep, by bucket: key and value (`None`: deleted).
type BucketWrites = BTreeMap<String, Vec<(String, Option<Vec<u8>>)>>;

/// How `runnel test` runs the plugin.
pub struct HarnessOptions {
    /// Attempts per event: failures are retried at once (no backoff), and
    /// `handle-error` gets the event on the last one, as in the host.
    pub max_attempts: u32,
    /// The plugin's name (its buckets' namespace) and how it runs: grants,
    /// limits, config values, canned HTTP answers.
    pub name: String,
    pub settings: PluginSettings,
    /// Key-value state before the first event: bucket → key → value.
    pub kv_seed: BTreeMap<String, BTreeMap<String, String>>,
    /// Keep successful calls' writes for the next events (otherwise they
    /// are shown and dropped, as in a dry run).
    pub kv_commit: bool,
}

/// Runs every event through the plugin and returns the report. The report
/// holds nothing that changes from run to run (no generated ids or times),
/// so that it can be compared with an expected one.
pub async fn run(
    plugin: &Path,
    events: Vec<InputEvent>,
    options: &HarnessOptions,
) -> anyhow::Result<String> {
    let loaded = Standalone::load(plugin, &options.name, "test", options.settings.clone())?;
    let handler = &loaded.plugin;
    for (bucket, values) in &options.kv_seed {
        let writes = values
            .iter()
            .map(|(key, value)| (key.clone(), Some(value.as_bytes().to_vec())))
            .collect();
        loaded
            .write(bucket, writes)
            .await
            .with_context(|| format!("seeding key-value bucket {bucket:?}"))?;
    }
    let mut out = String::new();
    for (n, input) in events.into_iter().enumerate() {
        let mut event = input.event;
        if !input.is_envelope {
            event.id = format!("event-{}", n + 1);
            event.meta.created_at_utc = time::OffsetDateTime::UNIX_EPOCH;
        }
        writeln!(out, "event {}: {}", n + 1, event.name)?;
        for attempt in 1..=options.max_attempts.max(1) {
            event.meta.attempts = attempt;
            let handled = handler.handle(&event).await;
            writeln!(out, "  attempt {attempt}: {}", handled.verdict)?;
            for LogLine { level, text: line } in &handled.logs {
                writeln!(out, "    log {}: {line}", level.as_str())?;
            }
            for Routed { event: emitted, .. } in &handled.emitted {
                writeln!(
                    out,
                    "    emit {}: {}",
                    emitted.name,
                    String::from_utf8_lossy(&emitted.payload)
                )?;
            }
            for x in &handled.http {
                writeln!(out, "    http {} {} -> {}", x.method, x.url, x.outcome)?;
            }
            // A dry run's writes are never kept, as in the host.
            let keep = options.kv_commit && !event.meta.is_dry_run;
            let fate = match (keep, event.meta.is_dry_run) {
                (true, _) => "committed",
                (false, true) => "not kept: a dry run",
                (false, false) => "not kept: --kv-commit keeps it",
            };
            for w in &handled.kv.writes {
                let bucket = loaded.bucket_name(&w.bucket);
                match &w.value {
                    Some(v) => writeln!(
                        out,
                        "    kv {bucket} {:?} = {:?} ({fate})",
                        w.key,
                        String::from_utf8_lossy(v)
                    )?,
                    None => writeln!(out, "    kv {bucket} {:?} deleted ({fate})", w.key)?,
                }
            }
            if keep && !handled.kv.writes.is_empty() {
                let mut by_bucket: BucketWrites = BTreeMap::new();
                for w in &handled.kv.writes {
                    let bucket = loaded.bucket_name(&w.bucket).to_string();
                    by_bucket
                        .entry(bucket)
                        .or_default()
                        .push((w.key.clone(), w.value.clone()));
                }
                for (bucket, writes) in by_bucket {
                    loaded.write(&bucket, writes).await?;
                }
            }
            let Some(failure) =
                Failure::of_attempt(&handled.verdict, &event, attempt, options.max_attempts)
            else {
                break;
            };
            let (kind, last) = (failure.kind, failure.is_last_attempt);
            match handler.handle_error(&failure, last.then_some(&event)).await {
                Ok(logs) => {
                    writeln!(out, "    handle-error ({})", kind.as_str())?;
                    for LogLine { level, text: line } in logs {
                        writeln!(out, "      log {}: {line}", level.as_str())?;
                    }
                }
                Err(e) => writeln!(out, "    handle-error {e}")?,
            }
            if last {
                let s = if attempt == 1 { "" } else { "s" };
                writeln!(out, "  dead-lettered after {attempt} attempt{s}")?;
                break;
            }
        }
    }
    Ok(out)
}

/// The first line where `actual` and `expected` differ, as a short report;
/// `None` when they are the same.
pub fn difference(actual: &str, expected: &str) -> Option<String> {
    if actual == expected {
        return None;
    }
    let (a, e): (Vec<&str>, Vec<&str>) = (actual.lines().collect(), expected.lines().collect());
    let at = a
        .iter()
        .zip(&e)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(e.len()));
    let show = |lines: &[&str]| {
        lines
            .get(at)
            .copied()
            .unwrap_or("(end of output)")
            .to_string()
    };
    Some(format!(
        "line {}:\n  expected: {}\n  actual:   {}",
        at + 1,
        show(&e),
        show(&a)
    ))
}

#[cfg(test)]
mod tests {
    use super::difference;

    #[test]
    fn the_difference_names_the_first_line_that_differs() {
        assert_eq!(difference("a\nb\n", "a\nb\n"), None);
        let d = difference("a\nx\n", "a\nb\n").unwrap();
        assert!(
            d.starts_with("line 2:") && d.contains("expected: b") && d.contains("actual:   x"),
            "{d}"
        );
        let d = difference("a\n", "a\nb\n").unwrap();
        assert!(d.contains("actual:   (end of output)"), "{d}");
    }
}
