//! Fails (retry) while `attempts <= fail_times` from the payload
//! `{"fail_times": N}`, then succeeds. `handle-error` logs exactly what it
//! was given, so tests can check the host's error-handler semantics.
use runnel_guest::{export_plugin, log, Event, Failure, Outcome, Plugin, Refusal};

#[derive(serde::Deserialize)]
struct Spec {
    fail_times: u32,
}

struct Flaky;

impl Plugin for Flaky {
    fn handle(event: Event) -> Outcome {
        let spec: Spec = event.json()?;
        if event.meta.attempts <= spec.fail_times {
            return Err(Refusal::retry(format!(
                "failing attempt {} of {}",
                event.meta.attempts, spec.fail_times
            )));
        }
        log::info(&format!("succeeded on attempt {}", event.meta.attempts));
        Ok(())
    }

    fn handle_error(failure: Failure, event: Option<Event>) {
        log::info(&format!(
            "handle-error attempt={} last={} kind={:?} event={}",
            failure.attempt,
            failure.is_last_attempt,
            failure.kind,
            event.map_or("none".to_string(), |e| e.id),
        ));
    }
}

export_plugin!(Flaky);
