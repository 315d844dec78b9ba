//! `wasi:http/outgoing-handler` for plugins granted it: wasmtime's
//! implementation, with Runnel's rules in its `send_request` hook. A
//! request goes out only if the plugin's `grants.http` allow its URL (every
//! redirect hop comes back here: `wasi:http` does not follow them), only
//! GET and HEAD in a dry run, at most `max_requests_per_call` of them, and
//! no wait runs past the call's deadline. A refusal fails inside the guest
//! with `HTTP-request-denied`, and the host logs the URL and the grant that
//! would allow it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::{
    default_send_request, Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks,
};

use crate::outbound::{Allowlist, CannedResponses, Exchange, HttpLimits};

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
    /// Copied from the store before every `wasi:http` call.
    pub(super) deadline: Option<Instant>,
    dry_run: bool,
    event_id: String,
    requests: u32,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    /// Set when a wait ended at the call's deadline: the call then ends
    /// as a timeout, whatever the guest made of the error.
    deadline_hit: Arc<AtomicBool>,
}

/// What a call did over HTTP.
#[derive(Default)]
pub struct HttpOutput {
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
    ) -> HttpState {
        HttpState {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                plugin,
                allow,
                limits,
                canned,
                deadline: None,
                dry_run: false,
                event_id: String::new(),
                requests: 0,
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
        h.dry_run = dry_run;
        h.requests = 0;
        // A response still arriving from the last call writes into the old
        // list and flag, not into this call's.
        h.exchanges = Default::default();
        h.deadline_hit = Default::default();
    }

    /// Ends a call and tells what it sent.
    pub fn finish(&mut self) -> HttpOutput {
        let h = &mut self.hooks;
        HttpOutput {
            exchanges: std::mem::take(&mut *h.exchanges.lock().unwrap_or_else(|e| e.into_inner())),
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

impl Hooks {
    /// Records an exchange; the returned index lets its outcome be filled in
    /// when the response comes.
    fn record(&self, method: &str, url: &str, outcome: &str) -> usize {
        let mut list = self.exchanges.lock().unwrap_or_else(|e| e.into_inner());
        list.push(Exchange {
            method: method.to_string(),
            url: url.to_string(),
            outcome: outcome.to_string(),
        });
        list.len() - 1
    }

    fn refuse(&self, method: &str, url: &str, why: String, error: Error) -> Sent {
        let (plugin, event_id) = (&*self.plugin, &*self.event_id);
        tracing::warn!(
            plugin,
            event_id,
            "HTTP request refused: {method} {url}: {why}"
        );
        self.record(method, url, &format!("refused: {why}"));
        Box::new(async move { Err(error) })
    }

    /// Timeouts for the request: the guest's, the configured connect
    /// timeout, and none past the deadline.
    fn options(&self, asked: Option<RequestOptions>) -> RequestOptions {
        let left = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let cap = |t: Option<Duration>, default: Option<Duration>| {
            [t, default, left].into_iter().flatten().min()
        };
        let asked = asked.unwrap_or_default();
        RequestOptions {
            connect_timeout: cap(
                asked.connect_timeout,
                Some(Duration::from_millis(self.limits.connect_timeout_ms)),
            ),
            first_byte_timeout: cap(asked.first_byte_timeout, None),
            between_bytes_timeout: cap(asked.between_bytes_timeout, None),
        }
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
        let url = request.uri().to_string();
        if self.requests >= self.limits.max_requests_per_call {
            let why = format!(
                "more than {} requests in one call (http_limits.max_requests_per_call)",
                self.limits.max_requests_per_call
            );
            return self.refuse(&method, &url, why, Error::ConnectionLimitReached);
        }
        self.requests += 1;
        if let Err(refused) = self.allow.check(request.uri()) {
            let why = format!(
                "not granted (to allow: grants.http = [{:?}])",
                refused.grant
            );
            return self.refuse(&method, &url, why, Error::HttpRequestDenied);
        }
        if self.dry_run && !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
            let why = "a dry run may only GET or HEAD (no side effects)".to_string();
            return self.refuse(&method, &url, why, Error::HttpRequestDenied);
        }
        let at = self.record(&method, &url, "no response");
        let exchanges = self.exchanges.clone();
        let set_outcome = move |outcome: String| {
            if let Some(e) = exchanges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(at)
            {
                e.outcome = outcome;
            }
        };
        let hit = self.deadline_hit.clone();
        let deadline = self.deadline;
        let response_cap = self.limits.max_response_bytes;
        if let Some(canned) = &self.canned {
            let answer = canned.answer(&method, &url).map(|r| {
                let mut b = http::Response::builder().status(r.status);
                for (k, v) in r.header_list() {
                    b = b.header(k, v);
                }
                let body = http_body_util::Full::new(Bytes::from(r.body_bytes()))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                b.body(body)
            });
            set_outcome(match &answer {
                Ok(Ok(r)) => format!("{} (canned)", r.status().as_u16()),
                Ok(Err(e)) => format!("failed: canned response: {e}"),
                Err(e) => format!("failed: {e}"),
            });
            return Box::new(async move {
                match answer {
                    Ok(Ok(r)) => Ok((
                        r.map(|b| Bounded::new(b, response_cap, deadline, hit).boxed_unsync()),
                        Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                    )),
                    Ok(Err(e)) => Err(Error::InternalError(Some(format!("canned response: {e}")))),
                    Err(e) => Err(Error::InternalError(Some(e))),
                }
            });
        }
        let request_cap = self.limits.max_request_bytes;
        let request = request.map(|body| {
            http_body_util::Limited::new(body, request_cap as usize)
                .map_err(move |e| match e.downcast::<Error>() {
                    Ok(e) => *e,
                    Err(_) => Error::HttpRequestBodySize(Some(request_cap)),
                })
                .boxed_unsync()
        });
        let options = self.options(options);
        Box::new(async move {
            let sent = default_send_request(request, Some(options));
            let outcome = match deadline {
                Some(d) => tokio::time::timeout_at(d.into(), sent)
                    .await
                    .unwrap_or_else(|_| {
                        hit.store(true, Relaxed);
                        Err(Error::HttpResponseTimeout)
                    }),
                None => sent.await,
            };
            let timed_out = |e: &Error| {
                matches!(
                    e,
                    Error::ConnectionTimeout
                        | Error::ConnectionReadTimeout
                        | Error::HttpResponseTimeout
                ) && deadline.is_some_and(|d| Instant::now() >= d)
            };
            match outcome {
                Ok((response, io)) => {
                    set_outcome(response.status().as_u16().to_string());
                    let response = response.map(|b| {
                        Bounded::new(b.boxed_unsync(), response_cap, deadline, hit).boxed_unsync()
                    });
                    Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
                }
                Err(e) => {
                    if timed_out(&e) {
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
}

/// A response body that ends with an error past `cap` bytes or at the
/// call's deadline, so that neither a big body nor a slow one can hold the
/// host.
struct Bounded {
    inner: WasiBody,
    left: u64,
    cap: u64,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    hit: Arc<AtomicBool>,
}

impl Bounded {
    fn new(inner: WasiBody, cap: u64, deadline: Option<Instant>, hit: Arc<AtomicBool>) -> Self {
        Bounded {
            inner,
            left: cap,
            cap,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            hit,
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
                    this.hit.store(true, Relaxed);
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
