//! Panics (a wasm trap) when the payload is `trap`; handles anything else.
use runnel_guest::{export_plugin, log, Event, Outcome, Plugin};

struct Trapper;

impl Plugin for Trapper {
    fn handle(event: Event) -> Outcome {
        if event.payload == b"trap" {
            panic!("asked to trap by event {}", event.id);
        }
        log::info(&format!("handled {}", event.id));
        Ok(())
    }
}

export_plugin!(Trapper);
