//! Rejects every event: a permanent failure, dead-lettered without retries.
use runnel_guest::{export_plugin, Event, Outcome, Plugin, Refusal};

struct Rejecter;

impl Plugin for Rejecter {
    fn handle(event: Event) -> Outcome {
        Err(Refusal::reject(format!("{} is never acceptable", event.name)))
    }
}

export_plugin!(Rejecter);
