//! Burns CPU for `{"iterations": N}` rounds (with `"log": "text"`, logs the
//! text first; with `"sleep_ms": M`, sleeps M ms after: a wait in the
//! host), then emits `worked` whose payload is
//! the handled event's id: tests count these to prove that every event was
//! handled once, even by processes that were killed afterwards.
use runnel_guest::{emit, export_plugin, Event, Outcome, Plugin};

#[derive(serde::Deserialize)]
struct Spec {
    iterations: u64,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    log: String,
}

struct Worker;

impl Plugin for Worker {
    fn handle(event: Event) -> Outcome {
        let spec: Spec = event.json()?;
        if !spec.log.is_empty() {
            runnel_guest::log::info(&spec.log);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..spec.iterations {
            x = std::hint::black_box(x.rotate_left(5) ^ i).wrapping_mul(0x100_0000_01b3);
        }
        std::hint::black_box(x);
        if spec.sleep_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(spec.sleep_ms));
        }
        emit("worked", event.id.into_bytes())
    }
}

export_plugin!(Worker);
