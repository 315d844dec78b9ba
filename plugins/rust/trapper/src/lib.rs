//! Traps (panics) on demand, in `handle` or in `handle-error`:
//! - payload `trap`: `handle` panics;
//! - payload `reject-then-trap`: `handle` rejects, then `handle-error` panics;
//! - anything else is handled.
use runnel_guest::{export_plugin, log, Event, Failure, Outcome, Plugin, Refusal};

const TRAP_IN_HANDLE_ERROR: &str = "reject, then trap in handle-error";

struct Trapper;

impl Plugin for Trapper {
    fn handle(event: Event) -> Outcome {
        match event.payload.as_slice() {
            b"trap" => panic!("asked to trap by event {}", event.id),
            b"reject-then-trap" => Err(Refusal::reject(TRAP_IN_HANDLE_ERROR)),
            _ => {
                log::info(&format!("handled {}", event.id));
                Ok(())
            }
        }
    }

    fn handle_error(failure: Failure, _event: Option<Event>) {
        if failure.message == TRAP_IN_HANDLE_ERROR {
            panic!("asked to trap in handle-error");
        }
    }
}

export_plugin!(Trapper);
