//! Outbound HTTP (`wasi:http`), to the hosts the plugin's config grants
//! (`http = ["https://api.example.com"]` under `[plugin.grants]`).
//!
//! ```ignore
//! let price: Price = runnel_guest::http::get(&format!("{base}/prices/{sku}"))?.json()?;
//! runnel_guest::http::Request::post("https://pay.example.com/charge")
//!     .json(&charge)?
//!     .send()?
//!     .error_for_status()?;
//! ```
//!
//! Requests are effects outside the event system: an event redelivered
//! after a crash, or retried, sends them again. So every request other
//! than GET and HEAD carries an `Idempotency-Key` header unless the plugin
//! sets its own: the id of the event being handled for the call's first
//! such request, `<id>:2`, `<id>:3`, ... for the next ones, the same on
//! every attempt that sends the same requests in the same order. A server
//! that honours it applies each request once. In a dry run (a shadow, a replay)
//! the host refuses everything but GET and HEAD.
//!
//! Redirects are followed (up to [`MAX_REDIRECTS`]); each hop must be
//! granted too. Every wait ends at the call's time limit.

use std::cell::RefCell;
use std::time::Duration;

use super::bindings::wasi::http::{outgoing_handler, types};
use super::bindings::wasi::io::streams::StreamError;
use super::Refusal;

/// Redirects followed before a request fails.
pub const MAX_REDIRECTS: usize = 5;

thread_local! {
    /// The id of the event being handled, and how many requests other than
    /// GET and HEAD this call has sent: their idempotency keys.
    static EVENT: RefCell<(String, u32)> = const { RefCell::new((String::new(), 0)) };
}

/// Called by the exported functions around the plugin's: `id` is the event
/// being handled (`""` when there is none, as in `handle-error` before the
/// last attempt).
pub(crate) fn set_event_id(id: &str) {
    EVENT.with(|e| {
        let mut e = e.borrow_mut();
        e.0.clear();
        e.0.push_str(id);
        e.1 = 0;
    });
}

/// The next idempotency key of this call: the event id for its first
/// request other than GET and HEAD, then `<event id>:2`, `:3`, ...: the
/// same requests in the same order get the same keys on every attempt,
/// and two different requests of one call never share one. `None`
/// outside an event.
fn next_idempotency_key() -> Option<String> {
    EVENT.with(|e| {
        let mut e = e.borrow_mut();
        if e.0.is_empty() {
            return None;
        }
        e.1 += 1;
        Some(match e.1 {
            1 => e.0.clone(),
            n => format!("{}:{n}", e.0),
        })
    })
}

/// Why a request failed. With `?` in `handle` it becomes a retry, except a
/// refusal by the host, which no retry would change: a rejection.
#[derive(Debug, Clone)]
pub enum Error {
    /// The host refused it: not granted, or not GET/HEAD in a dry run.
    /// The host's log says which and what grant would allow it.
    Denied(String),
    /// No response in time (the call's time limit, or the request's).
    Timeout(String),
    /// Anything else: connection refused, a DNS failure, a body too big,
    /// an error status from [`Response::error_for_status`].
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied(m) => write!(f, "HTTP request denied: {m}"),
            Error::Timeout(m) => write!(f, "HTTP request timed out: {m}"),
            Error::Failed(m) => write!(f, "HTTP request failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        match e {
            Error::Denied(_) => Refusal::reject(e),
            _ => Refusal::retry(e),
        }
    }
}

/// A request to build and send.
#[derive(Clone, Debug)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

/// GETs `url`.
pub fn get(url: &str) -> Result<Response, Error> {
    Request::get(url).send()
}

impl Request {
    /// A request with any method (`"PATCH"`, ...).
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_ascii_uppercase(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }
    pub fn put(url: &str) -> Request {
        Request::new("PUT", url)
    }
    pub fn delete(url: &str) -> Request {
        Request::new("DELETE", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and its content type.
    pub fn json<T: serde::Serialize>(self, value: &T) -> Result<Request, Error> {
        let body = serde_json::to_vec(value).map_err(|e| Error::Failed(e.to_string()))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// The idempotency key (by default, for methods other than GET and
    /// HEAD, the event id, then `<id>:2`, ... for a call's later requests).
    pub fn idempotency_key(self, key: &str) -> Request {
        self.header("idempotency-key", key)
    }

    /// Waits at most this long for the connection and then for each part of
    /// the response (the call's time limit applies anyway).
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request, following redirects, and reads the whole response.
    pub fn send(mut self) -> Result<Response, Error> {
        let has = |headers: &[(String, String)], name: &str| {
            headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
        };
        if !matches!(self.method.as_str(), "GET" | "HEAD") && !has(&self.headers, "idempotency-key")
        {
            if let Some(key) = next_idempotency_key() {
                self.headers.push(("idempotency-key".into(), key));
            }
        }
        for _ in 0..=MAX_REDIRECTS {
            let response = self.send_once()?;
            let location = response.header("location").map(str::to_string);
            match (response.status, location) {
                (301 | 302 | 303 | 307 | 308, Some(to)) => {
                    let next = resolve(&self.url, &to);
                    // Credentials are for the origin they were set for.
                    if origin(&next) != origin(&self.url) {
                        self.headers.retain(|(k, _)| {
                            !k.eq_ignore_ascii_case("authorization")
                                && !k.eq_ignore_ascii_case("cookie")
                                && !k.eq_ignore_ascii_case("proxy-authorization")
                        });
                    }
                    self.url = next;
                    // As browsers do: a 303, or a 301/302 after a POST,
                    // becomes a GET without a body.
                    if response.status == 303
                        || (matches!(response.status, 301 | 302) && self.method == "POST")
                    {
                        self.method = "GET".into();
                        self.body.clear();
                        self.headers.retain(|(k, _)| {
                            !k.eq_ignore_ascii_case("content-type")
                                && !k.eq_ignore_ascii_case("content-length")
                        });
                    }
                }
                _ => return Ok(response),
            }
        }
        Err(Error::Failed(format!(
            "{}: more than {MAX_REDIRECTS} redirects",
            self.url
        )))
    }

    fn send_once(&self) -> Result<Response, Error> {
        let url = &self.url;
        let (scheme, authority, path) = split_url(url)
            .ok_or_else(|| Error::Failed(format!("{url:?} is not an absolute http(s) URL")))?;
        let headers = types::Fields::new();
        for (k, v) in &self.headers {
            headers
                .append(k, v.as_bytes())
                .map_err(|e| Error::Failed(format!("header {k:?}: {e:?}")))?;
        }
        let request = types::OutgoingRequest::new(headers);
        let method = match self.method.as_str() {
            "GET" => types::Method::Get,
            "HEAD" => types::Method::Head,
            "POST" => types::Method::Post,
            "PUT" => types::Method::Put,
            "DELETE" => types::Method::Delete,
            "PATCH" => types::Method::Patch,
            "OPTIONS" => types::Method::Options,
            other => types::Method::Other(other.to_string()),
        };
        let scheme = if scheme == "https" {
            types::Scheme::Https
        } else {
            types::Scheme::Http
        };
        let bad = |what: &str| Error::Failed(format!("{url}: invalid {what}"));
        request.set_method(&method).map_err(|_| bad("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|_| bad("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|_| bad("host"))?;
        request
            .set_path_with_query(Some(&path))
            .map_err(|_| bad("path"))?;
        let body = request.body().map_err(|_| bad("body"))?;
        let options = self.timeout.map(|t| {
            let o = types::RequestOptions::new();
            let ns = t.as_nanos().min(u64::MAX as u128) as u64;
            let _ = o.set_connect_timeout(Some(ns));
            let _ = o.set_first_byte_timeout(Some(ns));
            let _ = o.set_between_bytes_timeout(Some(ns));
            o
        });
        let pending = outgoing_handler::handle(request, options).map_err(|e| error(url, e))?;
        // The body goes out while the host sends the request. If the host
        // refused the request, the body's stream is closed: then the
        // response's error says why, not the write's.
        let sent = send_body(body, &self.body)
            .map_err(|e| Error::Failed(format!("{url}: sending the body: {e}")));
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(e))) => return Err(error(url, e)),
            _ => return Err(Error::Failed(format!("{url}: no response"))),
        };
        sent?;
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|_| bad("response body"))?;
        let mut bytes = Vec::new();
        {
            let stream = incoming.stream().map_err(|_| bad("response body"))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        let e = types::http_error_code(&e)
                            .map(|code| error(url, code))
                            .unwrap_or_else(|| {
                                Error::Failed(format!("{url}: {}", e.to_debug_string()))
                            });
                        return Err(e);
                    }
                }
            }
        }
        drop(types::IncomingBody::finish(incoming));
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }
}

/// Writes a request body in the chunks a stream accepts, then ends it.
fn send_body(body: types::OutgoingBody, bytes: &[u8]) -> Result<(), String> {
    {
        let out = body.write().map_err(|_| "no body stream".to_string())?;
        for chunk in bytes.chunks(4096) {
            out.blocking_write_and_flush(chunk)
                .map_err(|e| format!("{e:?}"))?;
        }
    }
    types::OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))
}

fn error(url: &str, code: types::ErrorCode) -> Error {
    match code {
        types::ErrorCode::HttpRequestDenied => Error::Denied(format!(
            "{url} (not granted by the plugin's grants.http, or not GET/HEAD in a dry run)"
        )),
        types::ErrorCode::ConnectionLimitReached => Error::Denied(format!(
            "{url}: too many requests in one call (http_limits.max_requests_per_call)"
        )),
        types::ErrorCode::ConnectionTimeout
        | types::ErrorCode::ConnectionReadTimeout
        | types::ErrorCode::ConnectionWriteTimeout
        | types::ErrorCode::HttpResponseTimeout => Error::Timeout(format!("{url}: {code:?}")),
        other => Error::Failed(format!("{url}: {other:?}")),
    }
}

/// `scheme://authority/path?query` → its three parts, the path starting
/// with `/`.
fn split_url(url: &str) -> Option<(&str, &str, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    let path = match path.starts_with('/') {
        true => path.to_string(),
        false => format!("/{path}"),
    };
    (!authority.is_empty()).then_some((scheme, authority, path))
}

/// `scheme://authority` of a URL, lowercase.
fn origin(url: &str) -> Option<String> {
    split_url(url)
        .map(|(s, a, _)| format!("{}://{}", s.to_ascii_lowercase(), a.to_ascii_lowercase()))
}

/// A redirect's `Location` resolved against `base` (RFC 3986 §5.2, for the
/// forms servers send: absolute, `//host/path`, `/path`, `?query`,
/// `relative/path`).
fn resolve(base: &str, location: &str) -> String {
    let is_absolute = location.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    if is_absolute {
        return location.to_string();
    }
    let Some((scheme, authority, path)) = split_url(base) else {
        return location.to_string();
    };
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = path.split('?').next().unwrap_or("/");
    if location.starts_with('?') {
        return format!("{scheme}://{authority}{path}{location}");
    }
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{scheme}://{authority}{dir}{location}")
}

/// A whole response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Names in lowercase, as received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; a body that does not parse is a failure
    /// (a retry with `?`), since the server may answer better next time.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Failed(format!("response is not the expected JSON: {e}")))
    }

    /// This response, or an error for a 4xx or 5xx status.
    pub fn error_for_status(self) -> Result<Response, Error> {
        match self.status {
            400..=599 => Err(Error::Failed(format!(
                "status {}: {}",
                self.status,
                self.text().chars().take(200).collect::<String>()
            ))),
            _ => Ok(self),
        }
    }
}
