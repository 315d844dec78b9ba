//! Canned responses: `runnel test --http FILE` answers a plugin's requests
//! from a file instead of the network, so that a plugin's author tests it
//! without servers.
//!
//! The file is a JSON array, one entry per response:
//! `{"request": "GET http://prices.local/sku/42", "status": 200,
//!   "headers": {"content-type": "application/json"}, "body": "..."}`
//! (or `"json": {...}` for a JSON body). `request` is the method and the
//! full URL as sent. Entries for the same request answer it in turn, the
//! last one from then on: a 503 then a 200 tests a retry.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use anyhow::Context as _;
use serde::Deserialize;

/// One response as the file gives it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CannedResponse {
    /// `METHOD URL`.
    pub request: String,
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body as text.
    #[serde(default)]
    pub body: Option<String>,
    /// The body as JSON (with `content-type: application/json` unless
    /// `headers` names another).
    #[serde(default)]
    pub json: Option<serde_json::Value>,
}

fn ok() -> u16 {
    200
}

impl CannedResponse {
    /// The body's bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        match (&self.body, &self.json) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(json)) => json.to_string().into_bytes(),
            (None, None) => Vec::new(),
        }
    }

    /// Headers to send, with the JSON content type when the body is JSON.
    pub fn header_list(&self) -> Vec<(String, String)> {
        let mut headers: Vec<_> = self.headers.clone().into_iter().collect();
        let has_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if self.json.is_some() && self.body.is_none() && !has_type {
            headers.push(("content-type".into(), "application/json".into()));
        }
        headers
    }
}

/// The responses of a file, by request.
#[derive(Debug, Default)]
pub struct CannedResponses {
    /// `METHOD URL` → the responses in order, and how many were served.
    by_request: BTreeMap<String, (Vec<CannedResponse>, AtomicUsize)>,
    /// Where they came from, for the error of a request with none.
    source: String,
}

impl CannedResponses {
    pub fn load(path: &Path) -> anyhow::Result<CannedResponses> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let list: Vec<CannedResponse> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a JSON array of responses ({{\"request\": \"GET URL\", \"status\": 200, \"body\": ...}})",
                path.display()
            )
        })?;
        Self::from_list(list, &path.display().to_string())
    }

    pub fn from_list(list: Vec<CannedResponse>, source: &str) -> anyhow::Result<CannedResponses> {
        let mut by_request: BTreeMap<String, (Vec<CannedResponse>, AtomicUsize)> = BTreeMap::new();
        for r in list {
            let key = normalise(&r.request).with_context(|| {
                format!("{source}: request {:?}: expected \"METHOD URL\"", r.request)
            })?;
            by_request
                .entry(key)
                .or_insert_with(|| (Vec::new(), AtomicUsize::new(0)))
                .0
                .push(r);
        }
        Ok(CannedResponses {
            by_request,
            source: source.to_string(),
        })
    }

    /// The next response to `method url`, or an error saying there is none
    /// and where to add one.
    pub fn answer(&self, method: &str, url: &str) -> Result<&CannedResponse, String> {
        let key = format!("{} {url}", method.to_ascii_uppercase());
        let (list, served) = self.by_request.get(&key).ok_or_else(|| {
            format!(
                "no canned response for {key}: add {{\"request\": {key:?}, ...}} to {}",
                self.source
            )
        })?;
        let n = served.fetch_add(1, Relaxed);
        Ok(&list[n.min(list.len() - 1)])
    }
}

/// `get  http://x/y` → `GET http://x/y`, the URL as `http::Uri` prints it.
fn normalise(request: &str) -> anyhow::Result<String> {
    let (method, url) = request
        .trim()
        .split_once(char::is_whitespace)
        .context("no URL")?;
    let uri: http::Uri = url.trim().parse().context("not a URL")?;
    anyhow::ensure!(
        uri.scheme().is_some() && uri.authority().is_some(),
        "not an absolute URL"
    );
    let uri = match uri.path_and_query() {
        Some(_) => uri,
        None => format!("{uri}/").parse()?,
    };
    Ok(format!("{} {uri}", method.to_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canned(request: &str, status: u16) -> CannedResponse {
        CannedResponse {
            request: request.into(),
            status,
            headers: Default::default(),
            body: None,
            json: None,
        }
    }

    #[test]
    fn responses_to_one_request_are_served_in_turn_then_the_last_repeats() {
        let c = CannedResponses::from_list(
            vec![
                canned("post http://x/charge", 503),
                canned("POST http://x/charge", 200),
            ],
            "t.json",
        )
        .unwrap();
        let statuses: Vec<u16> = (0..3)
            .map(|_| c.answer("POST", "http://x/charge").unwrap().status)
            .collect();
        assert_eq!(statuses, [503, 200, 200]);
    }

    #[test]
    fn a_request_without_a_response_names_the_file() {
        let c = CannedResponses::from_list(vec![canned("GET http://x", 200)], "t.json").unwrap();
        assert_eq!(c.answer("get", "http://x/").unwrap().status, 200);
        let e = c.answer("GET", "http://x/other").unwrap_err();
        assert!(
            e.contains("GET http://x/other") && e.contains("t.json"),
            "{e}"
        );
    }

    #[test]
    fn a_json_body_says_so_in_its_content_type() {
        let mut r = canned("GET http://x/", 200);
        r.json = Some(serde_json::json!({"price": 12}));
        assert_eq!(r.body_bytes(), br#"{"price":12}"#);
        assert_eq!(
            r.header_list(),
            [("content-type".to_string(), "application/json".to_string())]
        );
        assert!(CannedResponses::from_list(vec![canned("GET /relative", 200)], "t").is_err());
    }
}
