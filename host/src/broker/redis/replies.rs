//! Decoding Redis replies into entries and deliveries: the values redis-rs
//! hands back, and the raw RESP2 bytes of the blocking reader's
//! `XREADGROUP` (see [`super::reader`]).

use std::sync::Arc;

use redis::Value;
use redis_protocol::resp2::types::RangeFrame;

use super::reader::{bytes, describe};
use crate::broker::{Delivery, Entry, Field};

pub(super) fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// `[[id, [field, value, ...]], ...]`, keeping field order (the first field
/// is the event). Entries deleted while pending come back with no fields and
/// are skipped.
pub(super) fn entries(v: Value) -> Vec<Entry> {
    array(v)
        .into_iter()
        .filter_map(|item| {
            let mut parts = array(item).into_iter();
            let id = text(&parts.next()?)?;
            let raw = array(parts.next()?);
            if raw.is_empty() {
                return None;
            }
            let mut fields: Vec<Field> = Vec::with_capacity(raw.len() / 2);
            let mut raw = raw.into_iter();
            while let (Some(k), Some(v)) = (raw.next(), raw.next()) {
                let value = match v {
                    Value::BulkString(b) => b,
                    other => text(&other).unwrap_or_default().into_bytes(),
                };
                fields.push((text(&k).unwrap_or_default(), value));
            }
            Some(Entry {
                id,
                fields: Arc::new(fields),
            })
        })
        .collect()
}

/// An `XREADGROUP` reply as redis-rs decodes it: per stream `[name,
/// entries]` (a map in RESP3), nil when nothing was read.
pub(super) fn stream_entries(reply: Value) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    let mut items = match reply {
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        other => array(other)
            .into_iter()
            .flat_map(|s| {
                let mut parts = array(s).into_iter();
                [parts.next(), parts.next()]
            })
            .map(|v| v.unwrap_or(Value::Nil))
            .collect::<Vec<_>>(),
    }
    .into_iter();
    while let (Some(name), Some(found)) = (items.next(), items.next()) {
        let stream = text(&name).unwrap_or_default();
        deliveries.extend(entries(found).into_iter().map(|entry| Delivery {
            stream: stream.clone(),
            entry,
            deliveries: 1,
        }));
    }
    deliveries
}

/// An `XREADGROUP` reply (RESP2): nil when BLOCK ran out, else per stream
/// `[name, [[id, [field, value, ...]], ...]]`. An error reply (say,
/// `NOGROUP`) comes back as `Err` with Redis's words.
pub(super) fn read_group_reply(buf: &[u8], frame: RangeFrame) -> Result<Vec<Delivery>, String> {
    let text = |r: &(usize, usize)| String::from_utf8_lossy(bytes(buf, r)).into_owned();
    let streams = match frame {
        RangeFrame::Null => return Ok(Vec::new()),
        RangeFrame::Array(streams) => streams,
        other => return Err(describe(buf, &other)),
    };
    let mut deliveries = Vec::new();
    for stream in streams {
        let (name, entries) = match stream {
            RangeFrame::Array(parts) => match <[RangeFrame; 2]>::try_from(parts) {
                Ok([RangeFrame::BulkString(name), RangeFrame::Array(entries)]) => {
                    (text(&name), entries)
                }
                _ => return Err("a stream in the reply is not [name, entries]".into()),
            },
            other => return Err(format!("unexpected {}", describe(buf, &other))),
        };
        deliveries.reserve(entries.len());
        for entry in entries {
            let RangeFrame::Array(parts) = entry else {
                return Err("an entry in the reply is not [id, fields]".into());
            };
            let mut parts = parts.into_iter();
            let (Some(RangeFrame::BulkString(id)), Some(raw)) = (parts.next(), parts.next()) else {
                return Err("an entry in the reply is not [id, fields]".into());
            };
            // Entries deleted while pending come back with nil fields.
            let RangeFrame::Array(raw) = raw else {
                continue;
            };
            let mut fields: Vec<Field> = Vec::with_capacity(raw.len() / 2);
            let mut raw = raw.into_iter();
            while let (Some(RangeFrame::BulkString(k)), Some(RangeFrame::BulkString(v))) =
                (raw.next(), raw.next())
            {
                fields.push((text(&k), bytes(buf, &v).to_vec()));
            }
            deliveries.push(Delivery {
                stream: name.clone(),
                entry: Entry {
                    id: text(&id),
                    fields: Arc::new(fields),
                },
                deliveries: 1,
            });
        }
    }
    Ok(deliveries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_their_field_order() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"1-1".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"zeta".to_vec()),
                Value::BulkString(b"first".to_vec()),
                Value::BulkString(b"alpha".to_vec()),
                Value::BulkString(b"second".to_vec()),
            ]),
        ])]);
        let e = entries(reply);
        assert_eq!(e[0].fields[0], ("zeta".to_string(), b"first".to_vec()));
        assert_eq!(e[0].fields[1].0, "alpha");
    }

    #[test]
    fn read_group_replies_decode_from_resp_bytes() {
        let reply = b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n\
            *2\r\n$3\r\n1-1\r\n*4\r\n$4\r\nzeta\r\n$5\r\nfirst\r\n$5\r\nalpha\r\n$6\r\nsecond\r\n\
            *2\r\n$3\r\n1-2\r\n*-1\r\n";
        let (frame, used) = redis_protocol::resp2::decode::decode_range(reply)
            .unwrap()
            .unwrap();
        assert_eq!(used, reply.len());
        let deliveries = read_group_reply(reply, frame).unwrap();
        // The deleted entry (nil fields) is skipped; field order is kept.
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].stream, "s");
        assert_eq!(deliveries[0].entry.id, "1-1");
        assert_eq!(
            *deliveries[0].entry.fields,
            vec![
                ("zeta".to_string(), b"first".to_vec()),
                ("alpha".to_string(), b"second".to_vec())
            ]
        );
        let nil = redis_protocol::resp2::decode::decode_range(b"*-1\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert!(read_group_reply(b"*-1\r\n", nil).unwrap().is_empty());
        let error = b"-NOGROUP No such key\r\n";
        let frame = redis_protocol::resp2::decode::decode_range(error)
            .unwrap()
            .unwrap()
            .0;
        assert!(read_group_reply(error, frame)
            .unwrap_err()
            .contains("NOGROUP"));
    }
}
