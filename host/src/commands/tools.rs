//! The operator's commands around a running system: `emit`, `dlq list`,
//! `dlq replay` and `replay` (a plugin over a range of a stream, dry-run).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::broker::{Append, Broker, EVENT_FIELD};
use crate::commands::input::InputEvent;
use crate::config::Grants;
use crate::dead_letter::{replay_stream, DeadLetterRecord};
use crate::event::Event;
use crate::handler::{Handler, LogLine, Routed};
use crate::plugin::Standalone;
use crate::publisher::{event_fields, DEPTH_FIELD};
use crate::subscriber::decode;

/// Appends events in pipelined batches of 1000; returns how many were
/// written. `progress` hears the size of each batch written.
pub async fn emit(
    broker: &dyn Broker,
    default_stream: Option<&str>,
    events: Vec<InputEvent>,
    progress: &dyn Fn(usize),
) -> anyhow::Result<usize> {
    let mut appends = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        let stream = e
            .stream
            .as_deref()
            .or(default_stream)
            .with_context(|| {
                format!(
                    "event {}: no stream: pass --stream or give \"stream\"",
                    i + 1
                )
            })?
            .to_string();
        appends.push(Append {
            stream,
            fields: event_fields(&e.event),
        });
    }
    let count = appends.len();
    let mut rest = appends;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(1000));
        let n = rest.len();
        broker.append(rest).await?;
        progress(n);
        rest = tail;
    }
    Ok(count)
}

/// Lists dead letters of a dead-letter stream, oldest first.
pub async fn dlq_list(broker: &dyn Broker, stream: &str, count: usize) -> anyhow::Result<String> {
    let entries = broker.range(stream, None, None, count).await?;
    let mut out = String::new();
    if entries.is_empty() {
        writeln!(out, "{stream}: no dead letters")?;
    }
    for entry in &entries {
        let r = DeadLetterRecord::from_entry(entry);
        let event = Event::from_json(&r.event)
            .map(|e| format!("{} {}", e.name, e.id))
            .unwrap_or_else(|_| "<undecodable entry>".into());
        writeln!(
            out,
            "{}  {event}  from={} plugin={} group={} kind={} attempts={} at={}\n    {}",
            r.id, r.stream, r.plugin, r.group, r.kind, r.attempts, r.failed_at, r.reason
        )?;
    }
    Ok(out)
}

/// `progress` hears (replayed so far, to replay) after each one.
///
/// Hands dead letters (all of them, or those with the given ids) back to
/// the consumer group that failed each, through its replay stream
/// ([`replay_stream`]), and removes them from the dead-letter stream. No
/// other group sees them again. A dead letter that names no group (written
/// by an older Runnel) needs `group`, which otherwise overrides nothing.
pub async fn dlq_replay(
    broker: &dyn Broker,
    stream: &str,
    ids: &[String],
    group: Option<&str>,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> anyhow::Result<usize> {
    let entries = broker.range(stream, None, None, usize::MAX).await?;
    let chosen: Vec<_> = entries
        .iter()
        .filter(|e| ids.is_empty() || ids.contains(&e.id))
        .collect();
    if let Some(missing) = ids.iter().find(|id| !entries.iter().any(|e| &e.id == *id)) {
        anyhow::bail!("{stream}: no dead letter {missing}");
    }
    let mut replayed = Vec::new();
    for entry in &chosen {
        let r = DeadLetterRecord::from_entry(entry);
        anyhow::ensure!(
            !r.stream.is_empty(),
            "{stream} {}: no source stream recorded",
            r.id
        );
        let group = match (r.group.as_str(), group) {
            ("", Some(given)) => given,
            ("", None) => anyhow::bail!(
                "{stream} {}: the dead letter names no consumer group (written by an older runnel): pass --group",
                r.id
            ),
            (recorded, _) => recorded,
        };
        let mut fields = vec![(EVENT_FIELD.to_string(), r.event.clone())];
        if r.depth > 0 {
            fields.push((DEPTH_FIELD.to_string(), r.depth.to_string().into_bytes()));
        }
        broker
            .append(vec![Append {
                stream: replay_stream(&r.stream, group),
                fields,
            }])
            .await?;
        replayed.push(entry.id.clone());
        progress(replayed.len(), chosen.len());
    }
    broker.delete(stream, &replayed).await?;
    Ok(replayed.len())
}

/// Runs a plugin over a range of a stream as a dry run: nothing is
/// published or acknowledged. Returns a report per event.
pub async fn replay(
    broker: &dyn Broker,
    stream: &str,
    from: Option<&str>,
    to: Option<&str>,
    count: usize,
    plugin: &Path,
) -> anyhow::Result<String> {
    let name = plugin
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let settings = crate::plugin::PluginSettings::for_tool(
        &name,
        std::time::Duration::from_secs(10),
        Grants::default(),
        None,
    )?;
    let loaded = Standalone::load(plugin, &name, "(not published)", settings)?;
    let handler = &loaded.plugin;
    let entries = broker.range(stream, from, to, count).await?;
    let mut out = String::new();
    for entry in &entries {
        let mut event = match decode(entry) {
            Ok(e) => e,
            Err(reason) => {
                writeln!(out, "{}  undecodable: {reason}", entry.id)?;
                continue;
            }
        };
        event.meta.is_dry_run = true;
        event.meta.attempts += 1;
        let handled = handler.handle(&event).await;
        writeln!(
            out,
            "{}  {} {}  → {}",
            entry.id, event.name, event.id, handled.verdict
        )?;
        for LogLine { level, text: line } in &handled.logs {
            writeln!(out, "    log {}: {line}", level.as_str())?;
        }
        for Routed { event: emitted, .. } in &handled.emitted {
            writeln!(
                out,
                "    would emit {}: {}",
                emitted.name,
                String::from_utf8_lossy(&emitted.payload)
            )?;
        }
    }
    writeln!(
        out,
        "{} events replayed from {stream} (dry run: nothing published or acknowledged)",
        entries.len()
    )?;
    Ok(out)
}
