//! Dead letters: entries that will not be handled, kept with why.
//!
//! The first field is `event`, holding the original entry's first field
//! unchanged, so a dead-letter stream reads like any event stream (a Go
//! consumer, or `runnel dlq replay`, gets the original envelope back). The
//! other fields say what happened.
//!
//! A replayed dead letter goes back to the one group that failed it, never
//! to the source stream (where every other group, Go services' included,
//! would see it again): to that group's replay stream,
//! [`replay_stream`], which its subscribers read beside the source.

use crate::broker::{Entry, Field, EVENT_FIELD};
use crate::event::{format_rfc3339_nano, now_utc};
use crate::handler::FailureKind;

/// The stream that replayed dead letters of `group` from `source` go to:
/// `<source>.replay.<group>`. Only that group reads it (from its first
/// entry); it shares the source's Redis Cluster hash tag, if any.
pub fn replay_stream(source: &str, group: &str) -> String {
    format!("{source}.replay.{group}")
}

/// Why and where an entry was given up on.
#[derive(Clone, Debug)]
pub struct DeadLetter<'a> {
    /// The stream the event was published to (not a replay stream).
    pub source_stream: &'a str,
    pub entry: &'a Entry,
    pub plugin: &'a str,
    /// The consumer group that gave up on it: where a replay goes.
    pub group: &'a str,
    pub kind: FailureKind,
    pub reason: &'a str,
    pub attempts: u32,
}

impl DeadLetter<'_> {
    /// The fields of the dead-letter entry.
    pub fn fields(&self) -> Vec<Field> {
        let original = self
            .entry
            .fields
            .first()
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        let mut fields = vec![
            (EVENT_FIELD.to_string(), original),
            ("reason".to_string(), self.reason.as_bytes().to_vec()),
            ("kind".to_string(), self.kind.as_str().as_bytes().to_vec()),
            ("plugin".to_string(), self.plugin.as_bytes().to_vec()),
            ("group".to_string(), self.group.as_bytes().to_vec()),
            (
                "attempts".to_string(),
                self.attempts.to_string().into_bytes(),
            ),
            ("stream".to_string(), self.source_stream.as_bytes().to_vec()),
            ("entry_id".to_string(), self.entry.id.as_bytes().to_vec()),
            (
                "failed_at".to_string(),
                format_rfc3339_nano(now_utc()).into_bytes(),
            ),
        ];
        // Kept so that a replay stays as far down its causal chain: a
        // replayed cycle must not start over with the whole budget.
        let depth = crate::publisher::causal_depth(self.entry);
        if depth > 0 {
            fields.push((
                crate::publisher::DEPTH_FIELD.to_string(),
                depth.to_string().into_bytes(),
            ));
        }
        // An entry that did not decode may not even have an `event` field:
        // keep all of it, as it was.
        if self.kind == FailureKind::Decode {
            let raw: serde_json::Map<String, serde_json::Value> = self
                .entry
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned().into()))
                .collect();
            fields.push((
                "raw_fields".to_string(),
                serde_json::Value::Object(raw).to_string().into_bytes(),
            ));
        }
        fields
    }
}

/// A dead-letter entry read back, for `runnel dlq list` and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterRecord {
    pub id: String,
    pub event: Vec<u8>,
    pub reason: String,
    pub kind: String,
    pub plugin: String,
    /// Empty in dead letters written before groups were recorded.
    pub group: String,
    /// How far down its causal chain the event was (0: from outside).
    pub depth: u32,
    pub attempts: u32,
    pub stream: String,
    pub failed_at: String,
}

impl DeadLetterRecord {
    pub fn from_entry(entry: &Entry) -> Self {
        let field = |name: &str| {
            entry
                .fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        DeadLetterRecord {
            id: entry.id.clone(),
            event: entry
                .fields
                .iter()
                .find(|(k, _)| k == EVENT_FIELD)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            reason: field("reason"),
            kind: field("kind"),
            plugin: field("plugin"),
            group: field("group"),
            depth: field(crate::publisher::DEPTH_FIELD).parse().unwrap_or(0),
            attempts: field("attempts").parse().unwrap_or(0),
            stream: field("stream"),
            failed_at: field("failed_at"),
        }
    }
}

/// A dead-letter entry as JSON, for the admin API and `runnel dlq list
/// --output json`: `id`, `source`, `plugin`, `group`, `kind`, `attempts`,
/// `failed_at`, `reason`, `event_name` and `event_id` (null for an entry
/// that is not an event), and `raw`, every field as text.
pub fn describe(entry: &Entry) -> serde_json::Value {
    let r = DeadLetterRecord::from_entry(entry);
    let event = crate::event::Event::from_json(&r.event).ok();
    let raw: serde_json::Map<String, serde_json::Value> = entry
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into()))
        .collect();
    serde_json::json!({
        "id": entry.id,
        "source": r.stream,
        "plugin": r.plugin,
        "group": r.group,
        "kind": r.kind,
        "attempts": r.attempts,
        "failed_at": r.failed_at,
        "reason": r.reason,
        "event_name": event.as_ref().map(|e| e.name.clone()),
        "event_id": event.as_ref().map(|e| e.id.clone()),
        "raw": raw,
    })
}
