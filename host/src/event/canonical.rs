//! The canonical envelope, decoded without serde.
//!
//! Nearly every entry on a stream is in the exact form the Go library and
//! Runnel write: keys in their order, no whitespace, strings without escapes.
//! Reading that form directly skips serde's generic machinery, which was
//! about 8% of the host's CPU per event on the Redis path. Anything else
//! (another key order, whitespace, an escape, a null, an error of any kind)
//! returns `None` and goes through serde_json, which reads every valid
//! envelope and explains every invalid one. Property tests hold the two to
//! the same result.

use base64::Engine as _;

use super::{parse_rfc3339, Event, Meta};

/// The event in `bytes` if they are a canonical envelope; `None` otherwise.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    let mut r = Reader { bytes, at: 0 };
    r.literal(b"{\"id\":")?;
    let id = r.string()?;
    r.literal(b",\"name\":")?;
    let name = r.string()?;
    r.literal(b",\"meta\":{\"created_at_utc\":")?;
    let created_at_utc = parse_rfc3339(r.string()?).ok()?;
    r.literal(b",\"correlation_id\":")?;
    let correlation_id = r.string()?;
    r.literal(b",\"attempts\":")?;
    let attempts = r.number()?;
    r.literal(b",\"is_dry_run\":")?;
    let is_dry_run = r.boolean()?;
    r.literal(b"},\"payload\":")?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(r.string()?)
        .ok()?;
    r.literal(b"}")?;
    (r.at == bytes.len()).then(|| Event {
        id: id.to_string(),
        name: name.to_string(),
        meta: Meta {
            created_at_utc,
            correlation_id: correlation_id.to_string(),
            attempts,
            is_dry_run,
        },
        payload,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn literal(&mut self, expected: &[u8]) -> Option<()> {
        let end = self.at + expected.len();
        (self.bytes.get(self.at..end)? == expected).then(|| self.at = end)
    }

    /// A string with nothing to unescape: no backslash, and no control
    /// character (which JSON forbids raw, so serde must be the one to say so).
    fn string(&mut self) -> Option<&'a str> {
        self.literal(b"\"")?;
        let rest = &self.bytes[self.at..];
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        let text = std::str::from_utf8(&rest[..len]).ok()?;
        self.at += len + 1;
        Some(text)
    }

    /// A `u32` as JSON writes it: digits, no sign, no leading zero.
    fn number(&mut self) -> Option<u32> {
        let rest = &self.bytes[self.at..];
        let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 || (len > 1 && rest[0] == b'0') {
            return None;
        }
        if matches!(rest.get(len), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let value = std::str::from_utf8(&rest[..len]).ok()?.parse().ok()?;
        self.at += len;
        Some(value)
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.literal(b"true").is_some() {
            Some(true)
        } else {
            self.literal(b"false").map(|()| false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Strings with nothing to escape, so that the canonical form applies.
    const PLAIN: &str = "[a-zA-Z0-9 ._:/é-]{0,40}";

    fn event(plain: bool) -> impl Strategy<Value = Event> {
        super::super::fuzz::arb_event_with(if plain { PLAIN } else { ".{0,40}" })
    }

    fn by_serde(bytes: &[u8]) -> Option<Event> {
        serde_json::from_slice(bytes).ok()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn every_plain_event_is_read_canonically_and_as_serde_reads_it(e in event(true)) {
            let json = e.to_json();
            prop_assert_eq!(decode(&json), Some(e.clone()));
            prop_assert_eq!(by_serde(&json), Some(e));
        }

        #[test]
        fn any_event_is_read_as_serde_reads_it_or_left_to_serde(e in event(false)) {
            let json = e.to_json();
            if let Some(fast) = decode(&json) {
                prop_assert_eq!(Some(fast), by_serde(&json));
            }
        }

        #[test]
        fn mangled_bytes_are_read_as_serde_reads_them_or_left_to_serde(e in event(true), at in 0usize..400, byte in any::<u8>(), cut in any::<bool>()) {
            let mut json = e.to_json();
            let at = at % json.len();
            if cut {
                json.truncate(at);
            } else {
                json[at] = byte;
            }
            if let Some(fast) = decode(&json) {
                prop_assert_eq!(Some(fast), by_serde(&json));
            }
        }
    }

    #[test]
    fn other_valid_forms_are_left_to_serde() {
        let canonical = r#"{"id":"a","name":"n","meta":{"created_at_utc":"2023-02-12T18:00:59Z","correlation_id":"","attempts":0,"is_dry_run":false},"payload":""}"#;
        assert!(decode(canonical.as_bytes()).is_some());
        for other in [
            canonical.replace(r#""id":"a""#, r#""id" : "a""#),
            canonical.replace(r#""payload":"""#, r#""payload":null"#),
            canonical.replace(r#""id":"a""#, r#""id":"\u0061""#),
            canonical.replace(r#""attempts":0"#, r#""attempts":0.0"#),
            canonical.replace(r#""attempts":0"#, r#""attempts":00"#),
            format!("{canonical} "),
        ] {
            assert_eq!(decode(other.as_bytes()), None, "{other}");
        }
    }
}
