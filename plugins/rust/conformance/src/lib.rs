//! The conformance plugin: one behaviour, specified in `plugins/CONFORMANCE.md`
//! and implemented in every guest language, so that one test can check each
//! language's build (and SDK) byte for byte against the same expectations.
use runnel_guest::{config, emit, emit_all, export_plugin, http, kv, log, Event, Failure, FailureKind, NewEvent};
use runnel_guest::{Outcome, Plugin, Refusal};
use serde::Serialize;

const FAIL_N_USAGE: &str = "fail-n needs a payload {\"n\": <integer 0..4294967295>}";

/// `meta`'s payload, fields in this order.
#[derive(Serialize)]
struct MetaEcho<'a> {
    id: &'a str,
    name: &'a str,
    correlation_id: &'a str,
    attempts: u32,
    is_dry_run: bool,
    created_at_utc: &'a str,
}

/// `n` of a `fail-n` payload: a JSON number with an integer value in u32's
/// range (`2`, `2.0` and `2e0` alike, as a JavaScript guest cannot tell them
/// apart).
fn fail_n(event: &Event) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_slice(&event.payload).ok()?;
    let n = value.as_object()?.get("n")?.as_f64()?;
    (n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&n)).then_some(n as u32)
}

struct Conformance;

impl Plugin for Conformance {
    fn handle(event: Event) -> Outcome {
        match event.name.as_str() {
            "echo" => emit("echoed", event.payload.clone()),
            "inherit" => emit("child", event.id.as_bytes()),
            "batch" => emit_all(vec![
                NewEvent {
                    name: "first".into(),
                    payload: b"1".to_vec(),
                },
                NewEvent {
                    name: "second".into(),
                    payload: b"2".to_vec(),
                },
            ]),
            "fail-n" => {
                let n = fail_n(&event).ok_or_else(|| Refusal::reject(FAIL_N_USAGE))?;
                let attempts = event.meta.attempts;
                if attempts <= n {
                    return Err(Refusal::retry(format!("attempt {attempts} of {n} fails")));
                }
                emit("recovered", format!("{{\"attempts\":{attempts}}}"))
            }
            "reject" => Err(Refusal::reject("rejected by conformance")),
            "retry" => Err(Refusal::retry("retry requested")),
            "log" => {
                let text = event
                    .text()
                    .ok_or_else(|| Refusal::reject("log needs a UTF-8 payload"))?;
                log::info(text);
                log::warn("conformance warn line");
                Ok(())
            }
            "meta" => {
                let payload = serde_json::to_vec(&MetaEcho {
                    id: &event.id,
                    name: &event.name,
                    correlation_id: &event.meta.correlation_id,
                    attempts: event.meta.attempts,
                    is_dry_run: event.meta.is_dry_run,
                    created_at_utc: &event.meta.created_at_utc,
                })
                .expect("strings, a number and a bool always encode");
                emit("meta-echoed", payload)
            }
            "no-route" => emit("unrouted", Vec::new()),
            "trap" => panic!("trap requested"),
            "kv-count" => {
                let bucket = kv::open("conformance")?;
                let n = bucket.increment("count", 1)?;
                if bucket.get("count")?.as_deref() != Some(n.to_string().as_bytes()) {
                    return Err(Refusal::reject("read its own write wrong"));
                }
                emit("counted", n.to_string())
            }
            "kv-lost" => {
                kv::open("conformance")?.set("lost", b"x")?;
                Err(Refusal::reject("kv write then reject"))
            }
            "kv-check" => {
                let bucket = kv::open("conformance")?;
                let lost = bucket.exists("lost")?;
                let count = match bucket.get("count")? {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None => "none".to_string(),
                };
                emit("kv-checked", format!("lost={lost} count={count}"))
            }
            "kv-denied" => kv::open("other").map(|_| ()).map_err(Refusal::from),
            "config" => {
                let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".into());
                log::info(&format!("token={}", or_none(config::get("token"))));
                let greeting = or_none(config::get("greeting"));
                let missing = or_none(config::get("missing"));
                emit("configured", format!("greeting={greeting} missing={missing}"))
            }
            "config-reject" => Err(Refusal::reject(format!(
                "bad token {}",
                config::get("token").unwrap_or_default()
            ))),
            "http-get" => {
                let base = config::require("http_base")?;
                let r = http::get(&format!("{base}/hello")).map_err(|_| Refusal::retry("http failed"))?;
                let header = r.header("x-conformance").unwrap_or("none");
                emit("http-got", format!("status={} x-conformance={header} body={}", r.status, r.text()))
            }
            "http-post" => {
                let base = config::require("http_base")?;
                let r = http::Request::post(&format!("{base}/echo"))
                    .body(event.payload.clone())
                    .send()
                    .map_err(|_| Refusal::retry("http failed"))?;
                emit("http-posted", format!("status={} {}", r.status, r.text()))
            }
            "http-denied" | "http-redirect" => {
                let url = match event.name.as_str() {
                    "http-denied" => format!("{}/hello", config::require("http_denied")?),
                    _ => format!("{}/away", config::require("http_base")?),
                };
                match http::get(&url) {
                    Ok(_) => Err(Refusal::retry("expected a denial")),
                    Err(_) => Err(Refusal::reject("http denied")),
                }
            }
            _ => Ok(()),
        }
    }

    fn handle_error(failure: Failure, event: Option<Event>) {
        let kind = match failure.kind {
            FailureKind::HandlerError => "handler-error",
            FailureKind::Rejected => "rejected",
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::Decode => "decode",
        };
        log::error(&format!(
            "handle-error: {kind} attempt {} last={} event={}",
            failure.attempt,
            failure.is_last_attempt,
            event.as_ref().map_or("none", |e| e.id.as_str()),
        ));
    }
}

export_plugin!(Conformance);
