//! `runnel test`: a plugin author's harness. Runs a component over events
//! from a file, in process, with no backend, and prints per event what
//! happened: the verdict of each attempt, what `handle-error` was told, the
//! logs and the events it would emit. With `--expect` the report is compared
//! with a file and any difference fails, so a plugin's behaviour can be
//! pinned in its own CI the way the Go seed's `pubsubtest` pins a handler's.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::config::Grants;
use crate::handler::{Failure, Handler};
use crate::input::InputEvent;
use crate::plugin::Standalone;

/// How `runnel test` runs the plugin.
pub struct HarnessOptions {
    /// Attempts per event: failures are retried at once (no backoff), and
    /// `handle-error` gets the event on the last one, as in the host.
    pub max_attempts: u32,
    pub timeout: Duration,
    pub grants: Grants,
}

/// Runs every event through the plugin and returns the report. The report
/// holds nothing that changes from run to run (no generated ids or times),
/// so that it can be compared with an expected one.
pub async fn run(
    plugin: &Path,
    events: Vec<InputEvent>,
    options: &HarnessOptions,
) -> anyhow::Result<String> {
    let loaded = Standalone::load(
        plugin,
        "test",
        "test",
        options.timeout,
        options.grants.clone(),
    )?;
    let handler = &loaded.plugin;
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
            for (level, line) in &handled.logs {
                writeln!(out, "    log {}: {line}", level.as_str())?;
            }
            for (_, emitted) in &handled.emitted {
                writeln!(
                    out,
                    "    emit {}: {}",
                    emitted.name,
                    String::from_utf8_lossy(&emitted.payload)
                )?;
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
                    for (level, line) in logs {
                        writeln!(out, "      log {}: {line}", level.as_str())?;
                    }
                }
                Err(e) => writeln!(out, "    handle-error {e}")?,
            }
            if last {
                writeln!(out, "  dead-lettered after {attempt} attempts")?;
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
