//! The event envelope and its JSON wire format.
//!
//! The format is the Go `pubsub` library's, byte for byte, so that Go services
//! and Runnel plugins read each other's events: keys in the order
//! `id, name, meta{created_at_utc, correlation_id, attempts, is_dry_run}, payload`,
//! the payload as standard base64 with padding, the time as RFC 3339 in UTC
//! with trailing zeros of the fraction trimmed (Go's `RFC3339Nano`).

mod canonical;

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// One event: what happened, with enough context to handle it exactly once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event; handlers use it for idempotency.
    pub id: String,
    /// The event type; also what routes an emitted event to a stream.
    pub name: String,
    pub meta: Meta,
    /// Opaque bytes (JSON by convention). A JSON `null` reads as empty.
    #[serde(with = "payload_base64")]
    pub payload: Vec<u8>,
}

/// Contextual information that travels with an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(with = "rfc3339_utc")]
    pub created_at_utc: OffsetDateTime,
    /// Shared by every event caused by one request; empty when none.
    pub correlation_id: String,
    /// How many times the event has been handed to a handler. Producers write 0.
    pub attempts: u32,
    /// A dry run must cause no side effects outside the event system.
    pub is_dry_run: bool,
}

impl Event {
    /// A new event as a producer writes it: a random UUID v4, the current time,
    /// no correlation, zero attempts.
    pub fn new(name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.into(),
            meta: Meta {
                created_at_utc: now_utc(),
                correlation_id: String::new(),
                attempts: 0,
                is_dry_run: false,
            },
            payload: payload.into(),
        }
    }

    /// An event caused by `self`: it inherits the correlation id and the
    /// dry-run flag, as the seed library passes them on through its context.
    pub fn caused(&self, name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Event::inheriting(
            &self.meta.correlation_id,
            self.meta.is_dry_run,
            name,
            payload,
        )
    }

    /// A new event that carries a cause's correlation id and dry-run flag,
    /// for callers that keep only those two of the cause.
    pub fn inheriting(
        correlation_id: &str,
        is_dry_run: bool,
        name: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        let mut child = Event::new(name, payload);
        child.meta.correlation_id = correlation_id.to_string();
        child.meta.is_dry_run = is_dry_run;
        child
    }

    /// Encodes the envelope as the wire's JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings, integers and bools cannot fail.
        serde_json::to_vec(self).expect("an event always serialises")
    }

    /// Decodes an envelope, with an error that says what is wrong with it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        match canonical::decode(bytes) {
            Some(event) => Ok(event),
            None => serde_json::from_slice(bytes).map_err(|e| DecodeError(e.to_string())),
        }
    }
}

/// Why bytes are not an event envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an event envelope: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// The current time in UTC, truncated to what the wire carries (nanoseconds).
pub fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Formats a time the way Go's `time.RFC3339Nano` does for a UTC time.
pub fn format_rfc3339_nano(t: OffsetDateTime) -> String {
    let mut out = String::with_capacity(30);
    write_rfc3339_nano(t, &mut out);
    out
}

/// [`format_rfc3339_nano`] appending to `out`, for callers that reuse a
/// buffer (every call of a plugin shows it the event's time).
pub fn write_rfc3339_nano(t: OffsetDateTime, out: &mut String) {
    let t = t.to_offset(UtcOffset::UTC);
    if !(0..=9999).contains(&t.year()) {
        return write_rfc3339_any_year(t, out);
    }
    // Digit by digit rather than through `write!`: the formatting machinery
    // was a tenth of the cost of a whole wasm call in a profile.
    let mut text = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, t.year() as u32);
    put(5, 2, u8::from(t.month()).into());
    put(8, 2, t.day().into());
    put(11, 2, t.hour().into());
    put(14, 2, t.minute().into());
    put(17, 2, t.second().into());
    put(20, 9, t.nanosecond());
    // Go's RFC3339Nano drops trailing zeros of the fraction, and the dot
    // with them when nothing is left.
    let mut end = 29;
    while end > 20 && text[end - 1] == b'0' {
        end -= 1;
    }
    if end == 20 {
        end = 19;
    }
    text[end] = b'Z';
    out.push_str(std::str::from_utf8(&text[..=end]).expect("ASCII digits"));
}

/// The general form, for years that do not fit four digits.
fn write_rfc3339_any_year(t: OffsetDateTime, out: &mut String) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond();
    if nanos != 0 {
        let mut digits = 9;
        let mut fraction = nanos;
        while fraction.is_multiple_of(10) {
            fraction /= 10;
            digits -= 1;
        }
        let _ = write!(out, ".{fraction:0digits$}");
    }
    out.push('Z');
}

/// Parses any valid RFC 3339 time, as the Go reader accepts any.
pub fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(s, &Rfc3339).map(|t| t.to_offset(UtcOffset::UTC))
}

/// Hands a JSON string to `parse` without copying it when it can be
/// borrowed from the input (every envelope field without escapes): decoding
/// is a large part of the host's work per event. `None` for a JSON null.
fn parse_str<'de, D, T>(
    d: D,
    what: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Text<F>(F, &'static str);

    impl<'de, T, F: FnOnce(&str) -> Result<T, String>> serde::de::Visitor<'de> for Text<F> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "{} as a string", self.1)
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            (self.0)(text).map(Some).map_err(E::custom)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    d.deserialize_any(Text(parse, what))
}

mod rfc3339_utc {
    use super::*;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_rfc3339_nano(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let time = parse_str(d, "created_at_utc", |text| {
            parse_rfc3339(text).map_err(|e| format!("created_at_utc {text:?} is not RFC 3339: {e}"))
        })?;
        time.ok_or_else(|| serde::de::Error::custom("created_at_utc is null, not a time"))
    }
}

mod payload_base64 {
    use super::*;

    const STANDARD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let payload = parse_str(d, "payload", |text| {
            STANDARD
                .decode(text.as_bytes())
                .map_err(|e| format!("payload is not standard base64: {e}"))
        })?;
        Ok(payload.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample envelope of `shared/reference/wire-format.md`.
    const GOLDEN: &str = r#"{"id":"2f1c7a3e-6b0d-4c1e-9a55-0c2b9d7e8f10","name":"user.created","meta":{"created_at_utc":"2023-02-12T18:00:59.123456789Z","correlation_id":"","attempts":0,"is_dry_run":false},"payload":"eyJoZWxsbyI6IndvcmxkIn0="}"#;

    #[test]
    fn golden_envelope_round_trips_byte_for_byte() {
        let event = Event::from_json(GOLDEN.as_bytes()).unwrap();
        assert_eq!(event.id, "2f1c7a3e-6b0d-4c1e-9a55-0c2b9d7e8f10");
        assert_eq!(event.name, "user.created");
        assert_eq!(event.payload, br#"{"hello":"world"}"#);
        assert_eq!(event.meta.created_at_utc.nanosecond(), 123_456_789);
        assert_eq!(String::from_utf8(event.to_json()).unwrap(), GOLDEN);
    }

    #[test]
    fn time_trims_trailing_zeros_and_drops_a_zero_fraction() {
        let whole = parse_rfc3339("2023-02-12T18:00:59Z").unwrap();
        assert_eq!(format_rfc3339_nano(whole), "2023-02-12T18:00:59Z");
        let tenth = parse_rfc3339("2023-02-12T18:00:59.100000000Z").unwrap();
        assert_eq!(format_rfc3339_nano(tenth), "2023-02-12T18:00:59.1Z");
    }

    #[test]
    fn any_rfc3339_offset_is_read_and_written_as_utc() {
        let t = parse_rfc3339("2023-02-12T20:00:59.5+02:00").unwrap();
        assert_eq!(format_rfc3339_nano(t), "2023-02-12T18:00:59.5Z");
    }

    #[test]
    fn null_payload_reads_as_empty_and_empty_writes_as_empty_string() {
        let json = GOLDEN.replace(r#""eyJoZWxsbyI6IndvcmxkIn0=""#, "null");
        let event = Event::from_json(json.as_bytes()).unwrap();
        assert!(event.payload.is_empty());
        assert!(String::from_utf8(event.to_json())
            .unwrap()
            .ends_with(r#""payload":""}"#));
    }

    #[test]
    fn bad_envelopes_say_what_is_wrong() {
        let err = Event::from_json(b"not json").unwrap_err();
        assert!(
            err.to_string().starts_with("not an event envelope"),
            "{err}"
        );
        let bad_b64 = GOLDEN.replace("eyJoZWxsbyI6IndvcmxkIn0=", "***");
        let err = Event::from_json(bad_b64.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
        let bad_time = GOLDEN.replace("2023-02-12T18:00:59.123456789Z", "yesterday");
        let err = Event::from_json(bad_time.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        let null_time = GOLDEN.replace(r#""2023-02-12T18:00:59.123456789Z""#, "null");
        let err = Event::from_json(null_time.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("created_at_utc is null"), "{err}");
        let number_payload = GOLDEN.replace(r#""eyJoZWxsbyI6IndvcmxkIn0=""#, "42");
        let err = Event::from_json(number_payload.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("payload as a string"), "{err}");
        // A string with escapes cannot be borrowed from the input; it is
        // read all the same.
        let escaped = GOLDEN.replace("eyJoZWxsbyI6IndvcmxkIn0=", r"eyJoZWxsbyI6IndvcmxkIn0\u003d");
        let event = Event::from_json(escaped.as_bytes()).unwrap();
        assert_eq!(event.payload, br#"{"hello":"world"}"#);
    }

    #[test]
    fn caused_events_inherit_correlation_and_dry_run() {
        let mut parent = Event::new("a", b"x".to_vec());
        parent.meta.correlation_id = "corr-1".into();
        parent.meta.is_dry_run = true;
        parent.meta.attempts = 3;
        let child = parent.caused("b", Vec::new());
        assert_eq!(child.meta.correlation_id, "corr-1");
        assert!(child.meta.is_dry_run);
        assert_eq!(child.meta.attempts, 0);
        assert_ne!(child.id, parent.id);
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests of the decoder: whatever the bytes, a clean error or an
    //! event, never a panic; and every event survives a round trip.
    use super::*;
    use proptest::prelude::*;

    fn arb_event() -> impl Strategy<Value = Event> {
        arb_event_with(".*")
    }

    /// Events whose id, name and correlation id match the regex `text`.
    pub(super) fn arb_event_with(text: &'static str) -> impl Strategy<Value = Event> {
        (
            text,
            text,
            text,
            any::<u32>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..512),
            0i64..4_102_444_800,
            0u32..1_000_000_000,
        )
            .prop_map(
                |(id, name, corr, attempts, dry, payload, secs, nanos)| Event {
                    id,
                    name,
                    meta: Meta {
                        created_at_utc: OffsetDateTime::from_unix_timestamp(secs)
                            .unwrap()
                            .replace_nanosecond(nanos)
                            .unwrap(),
                        correlation_id: corr,
                        attempts,
                        is_dry_run: dry,
                    },
                    payload,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = Event::from_json(&bytes);
        }

        #[test]
        fn mangled_envelopes_give_errors_not_panics(event in arb_event(), cut in 0usize..400, byte in any::<u8>()) {
            let mut json = event.to_json();
            let at = cut % json.len();
            json[at] = byte;
            let _ = Event::from_json(&json);
            json.truncate(at);
            prop_assert!(Event::from_json(&json).is_err() || at == 0 && json.is_empty());
        }

        #[test]
        fn the_fast_time_format_matches_the_general_one(secs in -62_167_219_200i64..253_402_300_800, nanos in prop_oneof![0u32..1_000_000_000, Just(0u32), (0u32..1000).prop_map(|n| n * 1_000_000)]) {
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap().replace_nanosecond(nanos).unwrap();
            let (mut fast, mut general) = (String::new(), String::new());
            write_rfc3339_nano(t, &mut fast);
            write_rfc3339_any_year(t, &mut general);
            prop_assert_eq!(&fast, &general);
            prop_assert_eq!(parse_rfc3339(&fast).unwrap(), t);
        }

        #[test]
        fn every_event_round_trips(event in arb_event()) {
            let decoded = Event::from_json(&event.to_json()).unwrap();
            prop_assert_eq!(&decoded, &event);
            prop_assert_eq!(decoded.to_json(), event.to_json());
        }
    }
}
