//! Counts events: each call adds 1 to `count:<event name>` in the bucket
//! `counts`, and emits `counted` with the new count when the payload asks
//! (`"emit": true`). Optional payload fields make the call fail after it
//! wrote, so tests can check that a failed call's writes never land:
//! `"fail_times": N` (retry while `attempts <= N`), `"reject": true`,
//! `"trap": true`. `"iterations": N` spins that long first (a handler
//! that takes time, for tests that kill a host mid-stream). To run into
//! the host's limits: `"blob_bytes": N` also sets `blob` to N bytes,
//! `"extra_keys": N` increments N more keys, `"key_bytes": N` increments a
//! key N bytes long.
use runnel_guest::{emit_json, export_plugin, kv, Event, Outcome, Plugin, Refusal};

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Spec {
    fail_times: u32,
    reject: bool,
    trap: bool,
    emit: bool,
    iterations: u64,
    blob_bytes: usize,
    extra_keys: usize,
    key_bytes: usize,
}

struct Counter;

impl Plugin for Counter {
    fn handle(event: Event) -> Outcome {
        let spec: Spec = if event.payload.is_empty() {
            Spec::default()
        } else {
            event.json().unwrap_or_default()
        };
        let mut x = 0u64;
        for i in 0..spec.iterations {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let counts = kv::open("counts")?;
        let key = format!("count:{}", event.name);
        let n = counts.increment(&key, 1)?;
        // Reads see the call's own writes.
        let read = counts.get(&key)?;
        if read.as_deref() != Some(n.to_string().as_bytes()) {
            return Err(Refusal::reject(format!(
                "read {read:?} after writing {n}: reads must see the call's own writes"
            )));
        }
        if spec.blob_bytes > 0 {
            counts.set("blob", &vec![b'x'; spec.blob_bytes])?;
        }
        for i in 0..spec.extra_keys {
            counts.increment(&format!("extra:{i}"), 1)?;
        }
        if spec.key_bytes > 0 {
            counts.increment(&"k".repeat(spec.key_bytes), 1)?;
        }
        if event.meta.attempts <= spec.fail_times {
            return Err(Refusal::retry(format!("failing attempt {}", event.meta.attempts)));
        }
        if spec.reject {
            return Err(Refusal::reject("asked to reject"));
        }
        if spec.trap {
            panic!("asked to trap after writing");
        }
        if spec.emit {
            emit_json("counted", &serde_json::json!({ "name": event.name, "count": n }))?;
        }
        Ok(())
    }
}

export_plugin!(Counter);
