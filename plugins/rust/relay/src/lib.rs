//! Emits `pong` for `ping` and `ping` for anything else, with the same
//! payload: routed back to the streams it reads, one relay (or two, one per
//! name) makes an endless chain unless the host bounds it.
use runnel_guest::{emit, export_plugin, Event, Outcome, Plugin};

struct Relay;

impl Plugin for Relay {
    fn handle(event: Event) -> Outcome {
        let next = if event.name == "ping" { "pong" } else { "ping" };
        emit(next, event.payload)
    }
}

export_plugin!(Relay);
