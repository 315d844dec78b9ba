//! A small HTTP server on loopback for the outbound-HTTP tests: fixed
//! answers, a slow one, a big one, a redirect off the granted host, and a
//! count of the requests that reached it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

/// Body of `GET /hello`.
pub const HELLO: &str = "hello from the test server";
/// Size of `GET /big`'s body: more than the default response cap (4 MiB).
pub const BIG_BYTES: usize = 5 << 20;

/// A running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TestServer {
    /// Starts the server on a free loopback port, in the current runtime.
    ///
    /// - `GET /hello`: 200, `x-conformance: yes`, body [`HELLO`]
    /// - `POST /echo`: 201, body `key=<Idempotency-Key> body=<request body>`
    /// - `GET /away`: 302 to `http://localhost:<port>/hello` (another host
    ///   name for the same server: not granted when only 127.0.0.1 is)
    /// - `GET /slow`: answers after 60 s
    /// - `GET /big`: 200 with [`BIG_BYTES`] bytes
    pub async fn start() -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<BTreeMap<String, usize>>> = Default::default();
        let app = Router::new()
            .route("/hello", get(hello))
            .route("/echo", post(echo))
            .route("/away", get(away))
            .route("/slow", get(slow))
            .route("/big", get(big))
            .layer(axum::middleware::from_fn_with_state(hits.clone(), count))
            // Bodies of any size are read: the client's cap is under test.
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            addr,
            hits,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that reached `METHOD /path` so far.
    pub fn hits(&self, route: &str) -> usize {
        self.hits.lock().unwrap().get(route).copied().unwrap_or(0)
    }
}

async fn count(
    State(hits): State<Arc<Mutex<BTreeMap<String, usize>>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = format!("{} {}", request.method(), request.uri().path());
    *hits.lock().unwrap().entry(route).or_default() += 1;
    next.run(request).await
}

async fn hello() -> impl IntoResponse {
    ([("x-conformance", "yes")], HELLO)
}

async fn echo(headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let key = headers
        .get("idempotency-key")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| "none".into());
    (
        StatusCode::CREATED,
        format!("key={key} body={}", String::from_utf8_lossy(&body)),
    )
}

async fn away(State(addr): State<SocketAddr>) -> impl IntoResponse {
    let to = format!("http://localhost:{}/hello", addr.port());
    (StatusCode::FOUND, [("location", to)])
}

async fn slow() -> &'static str {
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    "too late"
}

async fn big() -> Response {
    Body::from(vec![b'x'; BIG_BYTES]).into_response()
}

/// Where the demo's config expects its price service.
pub const DEMO_PRICES: &str = "127.0.0.1:18471";

/// Serves the demo's prices (`examples/orders/prices.json`) on
/// [`DEMO_PRICES`], as `host/examples/price_service.rs` does for
/// `scripts/demo.sh`, once per test process, for as long as it runs.
pub fn demo_price_service() {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    STARTED.get_or_init(|| {
        let file = crate::repo_root().join("examples/orders/prices.json");
        let prices: BTreeMap<String, u64> =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let prices = Arc::new(prices);
        let std_listener = std::net::TcpListener::bind(DEMO_PRICES)
            .unwrap_or_else(|e| panic!("{DEMO_PRICES}: {e} (is scripts/demo.sh running?)"));
        std_listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let app = Router::new()
                    .route("/prices/{sku}", get(price))
                    .with_state(prices);
                axum::serve(listener, app).await.unwrap();
            });
        });
    });
}

async fn price(
    State(prices): State<Arc<BTreeMap<String, u64>>>,
    axum::extract::Path(sku): axum::extract::Path<String>,
) -> Response {
    match prices.get(&sku) {
        Some(cents) => (
            [("content-type", "application/json")],
            serde_json::json!({"sku": sku, "unit_cents": cents}).to_string(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
