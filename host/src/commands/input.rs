//! Events to inject, one JSON object per line (NDJSON).
//!
//! A line is either a full envelope (it has `id` and `meta`), injected as is,
//! or a shorthand `{"name": ..., "payload": ...}` where `payload` is any JSON
//! value (a string is taken as its text) and these are optional:
//! `stream` (else the name's route), `correlation_id`, `is_dry_run`.

use serde::Deserialize;

use crate::event::Event;

/// An event and, when the line named one, its stream.
#[derive(Clone, Debug)]
pub struct InputEvent {
    pub stream: Option<String>,
    pub event: Event,
    /// Whether the line was a full envelope (its id and time are its own)
    /// rather than shorthand (given a fresh id and the current time).
    pub is_envelope: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Shorthand {
    name: String,
    #[serde(default)]
    payload: serde_json::Value,
    stream: Option<String>,
    #[serde(default)]
    correlation_id: String,
    #[serde(default)]
    is_dry_run: bool,
}

/// Parses one line; the error says what the line should look like.
pub fn parse_line(line: &str) -> anyhow::Result<InputEvent> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| anyhow::anyhow!("not JSON: {e}"))?;
    let is_envelope = value.get("id").is_some() && value.get("meta").is_some();
    if is_envelope {
        let event = Event::from_json(line.as_bytes())?;
        return Ok(InputEvent {
            stream: None,
            event,
            is_envelope: true,
        });
    }
    let s: Shorthand = serde_json::from_value(value).map_err(|e| {
        anyhow::anyhow!("expected an envelope or {{\"name\", \"payload\"[, \"stream\"]}}: {e}")
    })?;
    let payload = match s.payload {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::String(text) => text.into_bytes(),
        other => other.to_string().into_bytes(),
    };
    let mut event = Event::new(s.name, payload);
    event.meta.correlation_id = s.correlation_id;
    event.meta.is_dry_run = s.is_dry_run;
    Ok(InputEvent {
        stream: s.stream,
        event,
        is_envelope: false,
    })
}

/// Parses NDJSON text, skipping blank lines; errors name the line number.
pub fn parse(text: &str) -> anyhow::Result<Vec<InputEvent>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l).map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthand_takes_json_payloads_and_optional_fields() {
        let e = parse_line(r#"{"name":"a","payload":{"x":1},"stream":"s","correlation_id":"c"}"#)
            .unwrap();
        assert_eq!(e.stream.as_deref(), Some("s"));
        assert_eq!(e.event.payload, br#"{"x":1}"#);
        assert_eq!(e.event.meta.correlation_id, "c");
    }

    #[test]
    fn envelopes_are_kept_as_they_are() {
        let line = r#"{"id":"x","name":"n","meta":{"created_at_utc":"2023-02-12T18:00:59Z","correlation_id":"k","attempts":0,"is_dry_run":true},"payload":"aGk="}"#;
        let e = parse_line(line).unwrap();
        assert_eq!(e.event.to_json(), line.as_bytes());
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("\n{\"name\":\"a\"}\nnope\n").unwrap_err();
        assert!(err.to_string().starts_with("line 3: not JSON"), "{err}");
    }
}
