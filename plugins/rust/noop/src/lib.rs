//! Does nothing and succeeds: measures the cost of the host around a call.
use runnel_guest::{export_plugin, Event, Outcome, Plugin};

struct Noop;

impl Plugin for Noop {
    fn handle(_event: Event) -> Outcome {
        Ok(())
    }
}

export_plugin!(Noop);
