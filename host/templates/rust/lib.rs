//! {{name}}: a Runnel plugin. `greet` events are answered with `greeted`.
use runnel_guest::{emit_json, export_plugin, log, Event, Failure, Outcome, Plugin, Refusal};

struct Handler;

impl Plugin for Handler {
    fn handle(event: Event) -> Outcome {
        if event.name != "greet" {
            return Ok(()); // not ours: acknowledged without doing anything
        }
        let body: serde_json::Value = event.json()?; // not JSON: rejected
        let Some(who) = body["name"].as_str() else {
            return Err(Refusal::reject("a greet event needs a \"name\""));
        };
        log::info(&format!("greeting {who}"));
        emit_json("greeted", &serde_json::json!({ "hello": who }))
    }

    fn handle_error(failure: Failure, event: Option<Event>) {
        if let Some(event) = event {
            log::error(&format!("gave up on {}: {}", event.id, failure.message));
        }
    }
}

export_plugin!(Handler);
