//! `wasi:http/outgoing-handler` for plugins granted it: wasmtime's
//! implementation, with Runnel's rules in its `send_request` hook. A
//! request goes out only if the plugin's `grants.http` allow its URL (every
//! redirect hop comes back here: `wasi:http` does not follow them), only
//! GET and HEAD in a dry run, at most `max_requests_per_call` of them, and
//! no wait runs past the call's deadline. A refusal fails inside the guest
//! with `HTTP-request-denied`, and the host logs the URL and the grant that
//! would allow it.

use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::{
    default_send_request, Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks,
};

use super::wasi_config::ConfigValues;
use crate::outbound::{is_internal, Allowlist, CannedResponses, Exchange, HttpLimits};

/// Most requests a call's report keeps (the rest are counted), and most
/// refusals it logs: a plugin looping on refused requests must not fill
/// the host's memory or its log.
const MAX_EXCHANGES_KEPT: usize = 64;
const MAX_REFUSALS_LOGGED: u32 = 8;

/// What `wasi:http` needs in a store: wasmtime's context and our hooks.
pub struct HttpState {
    pub ctx: WasiHttpCtx,
    pub hooks: Hooks,
}

/// The rules, and the state of the call in progress.
pub struct Hooks {
    plugin: Arc<str>,
    allow: Arc<Allowlist>,
    limits: HttpLimits,
    /// `runnel test --http FILE`: answers instead of the network.
    canned: Option<Arc<CannedResponses>>,
    /// Keeps the plugin's secrets out of logged and reported URLs.
    config: Arc<ConfigValues>,
    /// Copied from the store before every `wasi:http` call.
    pub(super) deadline: Option<Instant>,
    /// Between `begin` and `finish`: outside a call (while a component
    /// instantiates) nothing goes out.
    active: bool,
    dry_run: bool,
    event_id: String,
    requests: u32,
    refusals: u32,
    exchanges: Arc<Mutex<Exchanges>>,
    /// Set when a wait ended at the call's deadline: the call then ends
    /// as a timeout, whatever the guest made of the error.
    deadline_hit: Arc<AtomicBool>,
}

#[derive(Default)]
struct Exchanges {
    kept: Vec<Exchange>,
    dropped: usize,
}

/// What a call did over HTTP.
#[derive(Default)]
pub struct HttpOutput {
    /// The first requests, in order; past [`MAX_EXCHANGES_KEPT`], a last
    /// line counts the others.
    pub exchanges: Vec<Exchange>,
    /// A wait for a response ran into the call's deadline.
    pub deadline_hit: bool,
}

impl HttpState {
    pub fn new(
        plugin: Arc<str>,
        allow: Arc<Allowlist>,
        limits: HttpLimits,
        canned: Option<Arc<CannedResponses>>,
        config: Arc<ConfigValues>,
    ) -> HttpState {
        HttpState {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                plugin,
                allow,
                limits,
                canned,
                config,
                deadline: None,
                active: false,
                dry_run: false,
                event_id: String::new(),
                requests: 0,
                refusals: 0,
                exchanges: Default::default(),
                deadline_hit: Default::default(),
            },
        }
    }

    /// Starts a call: no requests yet.
    pub fn begin(&mut self, event_id: &str, dry_run: bool) {
        let h = &mut self.hooks;
        h.event_id.clear();
        h.event_id.push_str(event_id);
        h.active = true;
        h.dry_run = dry_run;
        h.requests = 0;
        h.refusals = 0;
        // A response still arriving from the last call writes into the old
        // list and flag, not into this call's.
        h.exchanges = Default::default();
        h.deadline_hit = Default::default();
    }

    /// Ends a call and tells what it sent.
    pub fn finish(&mut self) -> HttpOutput {
        let h = &mut self.hooks;
        h.active = false;
        let mut list = h.exchanges.lock();
        let mut exchanges = std::mem::take(&mut list.kept);
        if list.dropped > 0 {
            exchanges.push(Exchange {
                method: "...".into(),
                url: String::new(),
                outcome: format!("{} more requests not listed", list.dropped),
            });
        }
        HttpOutput {
            exchanges,
            deadline_hit: h.deadline_hit.load(Relaxed),
        }
    }
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

/// Fills in an exchange's outcome once the response (or error) comes.
type SetOutcome = Arc<dyn Fn(String) + Send + Sync>;

impl Hooks {
    /// Records an exchange; the returned function fills in its outcome.
    fn record(&self, method: &str, url: &str, outcome: &str) -> SetOutcome {
        let mut list = self.exchanges.lock();
        if list.kept.len() >= MAX_EXCHANGES_KEPT {
            list.dropped += 1;
            return Arc::new(|_| {});
        }
        list.kept.push(Exchange {
            method: method.to_string(),
            url: url.to_string(),
            outcome: outcome.to_string(),
        });
        let at = list.kept.len() - 1;
        let exchanges = self.exchanges.clone();
        Arc::new(move |outcome| {
            if let Some(e) = exchanges.lock().kept.get_mut(at) {
                e.outcome = outcome;
            }
        })
    }

    fn refuse(&mut self, method: &str, url: &str, why: String, error: Error) -> Sent {
        self.refusals += 1;
        if self.refusals <= MAX_REFUSALS_LOGGED {
            let (plugin, event_id) = (&*self.plugin, &*self.event_id);
            tracing::warn!(
                plugin,
                event_id,
                "HTTP request refused: {method} {url}: {why}"
            );
        }
        // Its outcome is final: nothing fills it in later.
        let _ = self.record(method, url, &format!("refused: {why}"));
        Box::new(async move { Err(error) })
    }

    /// Timeouts for the request: the guest's, the configured connect
    /// timeout; the call's deadline bounds the whole exchange on top.
    fn options(&self, asked: Option<RequestOptions>) -> RequestOptions {
        let asked = asked.unwrap_or_default();
        let connect = Duration::from_millis(self.limits.connect_timeout_ms);
        RequestOptions {
            connect_timeout: Some(asked.connect_timeout.map_or(connect, |t| t.min(connect))),
            ..asked
        }
    }
}

/// Waits for `fut` until `deadline` (if any); past it, marks the call and
/// gives `expired`.
async fn until<T>(
    deadline: Option<Instant>,
    hit: &AtomicBool,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), fut)
            .await
            .unwrap_or_else(|_| {
                hit.store(true, Relaxed);
                Err(Error::HttpResponseTimeout)
            }),
        None => fut.await,
    }
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let method = request.method().as_str().to_string();
        let url = self.config.scrub(request.uri().to_string());
        if !self.active {
            let why = "outside a call (a component sends nothing while it starts)".to_string();
            return self.refuse(&method, &url, why, Error::HttpRequestDenied);
        }
        if self.requests >= self.limits.max_requests_per_call {
            let why = format!(
                "more than {} requests in one call (http_limits.max_requests_per_call)",
                self.limits.max_requests_per_call
            );
            return self.refuse(&method, &url, why, Error::ConnectionLimitReached);
        }
        self.requests += 1;
        let allowed = match self.allow.check(request.uri()) {
            Ok(allowed) => allowed,
            Err(refused) => {
                let why = format!(
                    "not granted (to allow: grants.http = [{:?}])",
                    refused.grant
                );
                return self.refuse(&method, &url, why, Error::HttpRequestDenied);
            }
        };
        if self.dry_run && !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
            let why = "a dry run may only GET or HEAD (no side effects)".to_string();
            return self.refuse(&method, &url, why, Error::HttpRequestDenied);
        }
        let request_cap = self.limits.max_request_bytes;
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > request_cap) {
            let why = format!(
                "a body of {} bytes is more than {request_cap} (http_limits.max_request_bytes)",
                declared.unwrap_or_default()
            );
            return self.refuse(
                &method,
                &url,
                why,
                Error::HttpRequestBodySize(Some(request_cap)),
            );
        }
        let set_outcome = self.record(&method, &url, "no response");
        let hit = self.deadline_hit.clone();
        let deadline = self.deadline;
        let response_cap = self.limits.max_response_bytes;
        let outcome = set_outcome.clone();
        let bounded = move |r: http::Response<WasiBody>, hit: Arc<AtomicBool>, status: String| {
            let watch = Watch {
                hit,
                status,
                outcome: outcome.clone(),
            };
            r.map(|b| Bounded::new(b, response_cap, deadline, watch).boxed_unsync())
        };
        if let Some(canned) = &self.canned {
            let answer = canned.answer(&method, &url).and_then(|r| {
                let mut b = http::Response::builder().status(r.status);
                for (k, v) in r.header_list() {
                    b = b.header(k, v);
                }
                let body = http_body_util::Full::new(Bytes::from(r.body_bytes()))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                b.body(body).map_err(|e| format!("canned response: {e}"))
            });
            set_outcome(match &answer {
                Ok(r) => format!("{} (canned)", r.status().as_u16()),
                Err(e) => format!("failed: {e}"),
            });
            return Box::new(async move {
                match answer {
                    Ok(r) => Ok((
                        {
                            let status = format!("{} (canned)", r.status().as_u16());
                            bounded(r, hit, status)
                        },
                        Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                    )),
                    Err(e) => Err(Error::InternalError(Some(e))),
                }
            });
        }
        let request = request.map(|body| {
            http_body_util::Limited::new(body, request_cap as usize)
                .map_err(move |e| match e.downcast::<Error>() {
                    Ok(e) => *e,
                    Err(_) => Error::HttpRequestBodySize(Some(request_cap)),
                })
                .boxed_unsync()
        });
        let options = self.options(options);
        let (plugin, event_id) = (self.plugin.clone(), self.event_id.clone());
        let to = request.uri().clone();
        Box::new(async move {
            // A granted name must not lead to the host's own network: the
            // name is resolved here and refused if it does (connecting
            // resolves it again; see wit/README.md on what that leaves).
            if !allowed.names_address {
                match until(deadline, &hit, public_only(&to)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(why)) => {
                        tracing::warn!(
                            plugin = &*plugin,
                            event_id,
                            "HTTP request refused: {to}: {why}"
                        );
                        set_outcome(format!("refused: {why}"));
                        return Err(Error::HttpRequestDenied);
                    }
                    Err(e) => {
                        set_outcome(format!("failed: {e}"));
                        return Err(e);
                    }
                }
            }
            match until(deadline, &hit, default_send_request(request, Some(options))).await {
                Ok((response, io)) => {
                    let status = response.status().as_u16().to_string();
                    set_outcome(status.clone());
                    let response = bounded(response.map(|b| b.boxed_unsync()), hit.clone(), status);
                    // The connection ends with the call at the latest.
                    let io = async move { until(deadline, &hit, io).await };
                    Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
                }
                Err(e) => {
                    let at_deadline = deadline.is_some_and(|d| Instant::now() >= d);
                    let timed_out = matches!(
                        e,
                        Error::ConnectionTimeout
                            | Error::ConnectionReadTimeout
                            | Error::HttpResponseTimeout
                    );
                    if timed_out && at_deadline {
                        hit.store(true, Relaxed);
                        set_outcome("timed out at the call's deadline".into());
                    } else {
                        set_outcome(format!("failed: {e}"));
                    }
                    Err(e)
                }
            }
        })
    }

    /// A request body cut at `max_request_bytes` reaches here as hyper's
    /// error around ours: the guest should read the limit, not a protocol
    /// error.
    fn p2_error_from_hyper(
        &mut self,
        err: &hyper::Error,
    ) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
        let mut source = std::error::Error::source(err);
        while let Some(e) = source {
            if let Some(Error::HttpRequestBodySize(n)) = e.downcast_ref::<Error>() {
                return ErrorCode::HttpRequestBodySize(*n);
            }
            source = e.source();
        }
        ErrorCode::HttpProtocolError
    }
}

/// Resolves the URI's host: `Ok(Err(why))` if any of its addresses is on
/// the host's own network ([`is_internal`]), an error if it does not
/// resolve.
async fn public_only(uri: &http::Uri) -> Result<Result<(), String>, Error> {
    let host = uri.host().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let addresses = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| Error::DnsError {
            rcode: Some(e.to_string()),
            info_code: None,
        })?;
    for a in addresses {
        if is_internal(a.ip()) {
            return Ok(Err(format!(
                "{host} resolves to {}, on the host's own network: only a grant naming the address itself (http://{}) reaches it",
                a.ip(),
                a
            )));
        }
    }
    Ok(Ok(()))
}

/// A response body that ends with an error past `cap` bytes or at the
/// call's deadline, so that neither a big body nor a slow one can hold the
/// host.
struct Bounded {
    inner: WasiBody,
    left: u64,
    cap: u64,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    watch: Watch,
}

/// Who hears that a body was cut: the call (a deadline hit makes it a
/// timeout) and its exchange in the report.
struct Watch {
    hit: Arc<AtomicBool>,
    /// The response's status, as the report shows it.
    status: String,
    outcome: SetOutcome,
}

impl Bounded {
    fn new(inner: WasiBody, cap: u64, deadline: Option<Instant>, watch: Watch) -> Self {
        Bounded {
            inner,
            left: cap,
            cap,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            watch,
        }
    }
}

impl Body for Bounded {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.left {
                    this.left = 0;
                    let w = &this.watch;
                    (w.outcome)(format!(
                        "{}, body cut at {} bytes (http_limits.max_response_bytes)",
                        w.status, this.cap
                    ));
                    return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(this.cap)))));
                }
                this.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                if expired {
                    let w = &this.watch;
                    w.hit.store(true, Relaxed);
                    (w.outcome)(format!(
                        "{}, body timed out at the call's deadline",
                        w.status
                    ));
                    return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
                }
                Poll::Pending
            }
            done => done,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
