//! Sends the HTTP request its event's payload describes and emits what
//! came back, for the outbound-HTTP tests:
//!
//! `{"url": "http://127.0.0.1:8080/hello", "method": "POST", "body": "b",
//!   "times": 1}` (method GET, no body and once by default; `"body_bytes":
//!   N` sends N bytes of `x` instead of `body`).
//!
//! Each response is emitted as `fetched` with payload `STATUS BODY` (the
//! body cut at 200 bytes); a 5xx status is a retry. A request the host
//! refuses is a rejection with the SDK's message, any other failure
//! (a timeout, a body too big) a retry with it.
use runnel_guest::http::{Error, Request};
use runnel_guest::{emit, export_plugin, Event, Outcome, Plugin, Refusal};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fetch {
    url: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default = "once")]
    times: u32,
    #[serde(default)]
    body_bytes: Option<usize>,
}

fn get() -> String {
    "GET".into()
}

fn once() -> u32 {
    1
}

struct Fetcher;

impl Plugin for Fetcher {
    fn handle(event: Event) -> Outcome {
        let fetch: Fetch = event.json()?;
        for _ in 0..fetch.times {
            let mut request = Request::new(&fetch.method, &fetch.url);
            if let Some(body) = &fetch.body {
                request = request.body(body.as_bytes());
            }
            if let Some(n) = fetch.body_bytes {
                request = request.body(vec![b'x'; n]);
            }
            let response = request.send().map_err(|e| match e {
                Error::Denied(_) => Refusal::reject(e),
                other => Refusal::retry(other),
            })?;
            if response.status >= 500 {
                return Err(Refusal::retry(format!("status {}", response.status)));
            }
            let mut text = response.text();
            text.truncate(200);
            emit("fetched", format!("{} {text}", response.status))?;
        }
        Ok(())
    }
}

export_plugin!(Fetcher);
