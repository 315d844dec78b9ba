//! Logs every event: name, id, correlation id and payload.
use runnel_guest::{export_plugin, log, Event, Failure, Outcome, Plugin};

struct Logger;

impl Plugin for Logger {
    fn handle(event: Event) -> Outcome {
        log::info(&format!(
            "{} {} correlation={} attempts={} dry_run={} payload={}",
            event.name,
            event.id,
            event.meta.correlation_id,
            event.meta.attempts,
            event.meta.is_dry_run,
            event.text().unwrap_or("<binary>"),
        ));
        Ok(())
    }

    fn handle_error(failure: Failure, _event: Option<Event>) {
        log::warn(&format!("failed: {}", failure.message));
    }
}

export_plugin!(Logger);
