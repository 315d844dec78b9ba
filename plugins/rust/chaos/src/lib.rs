//! The fault campaign's plugin (`scripts/chaos.sh`). Each event's payload
//! says what to do:
//!
//! | `kind`   | what it does                                                 |
//! |----------|--------------------------------------------------------------|
//! | `ok`     | succeeds                                                     |
//! | `poison` | fails (retry) on every attempt: it must be dead-lettered     |
//! | `flaky`  | fails while `attempts <= fail`, then succeeds                |
//! | `follow` | succeeds and emits a `follow-up` (kind `ok`, naming it)      |
//!
//! Every success emits `done`, `{"id": <event id>, "parent": <id or "">}`:
//! the campaign's checker counts these to find what was handled, twice or
//! never.
use runnel_guest::{emit_all, export_plugin, Event, NewEvent, Outcome, Plugin, Refusal};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize)]
struct Spec {
    kind: String,
    #[serde(default)]
    fail: u32,
    #[serde(default)]
    parent: String,
}

#[derive(Serialize)]
struct Done<'a> {
    id: &'a str,
    parent: &'a str,
}

struct Chaos;

impl Plugin for Chaos {
    fn handle(event: Event) -> Outcome {
        let spec: Spec = event.json()?;
        let mut out = Vec::new();
        match spec.kind.as_str() {
            "ok" => {}
            "poison" => return Err(Refusal::retry("poison: fails on every attempt")),
            "flaky" if event.meta.attempts <= spec.fail => {
                return Err(Refusal::retry(format!(
                    "flaky: attempt {} of {} that fail",
                    event.meta.attempts, spec.fail
                )))
            }
            "flaky" => {}
            "follow" => out.push(NewEvent {
                name: "follow-up".into(),
                payload: serde_json::to_vec(&Spec {
                    kind: "ok".into(),
                    fail: 0,
                    parent: event.id.clone(),
                })
                .map_err(|e| Refusal::reject(e.to_string()))?,
            }),
            other => return Err(Refusal::reject(format!("unknown kind {other:?}"))),
        }
        out.push(NewEvent {
            name: "done".into(),
            payload: serde_json::to_vec(&Done {
                id: &event.id,
                parent: &spec.parent,
            })
            .map_err(|e| Refusal::reject(e.to_string()))?,
        });
        emit_all(out)
    }
}

export_plugin!(Chaos);
