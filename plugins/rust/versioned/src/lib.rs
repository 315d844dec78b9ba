//! Emits `handled-by` with `{"id": <event id>, "version": "<V>"}` for every
//! event. `V` is the byte after the marker below; the hot-reload tests make
//! new versions of this plugin by patching that byte in the `.wasm` file,
//! which changes its hash and its output without rebuilding it. Version `T`
//! traps on every event: a build that is broken only once it runs.
use runnel_guest::{emit_json, export_plugin, Event, Outcome, Plugin};

/// `RUNNEL-VERSION=` then one version byte. Read with volatile loads so
/// the compiler keeps the bytes in the data section instead of folding them.
static MARKER: [u8; 16] = *b"RUNNEL-VERSION=0";

fn version() -> char {
    // SAFETY: reading an element of a static array through a valid pointer.
    let byte = unsafe { std::ptr::read_volatile(&MARKER[15]) };
    byte as char
}

struct Versioned;

impl Plugin for Versioned {
    fn handle(event: Event) -> Outcome {
        if version() == 'T' {
            panic!("version T traps on every event");
        }
        emit_json(
            "handled-by",
            &serde_json::json!({ "id": event.id, "version": version().to_string() }),
        )
    }
}

export_plugin!(Versioned);
