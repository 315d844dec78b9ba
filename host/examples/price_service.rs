//! The demo's price service: what the order enricher looks prices up in,
//! over HTTP. `GET /prices/<sku>` answers `{"sku": "KB-42", "unit_cents":
//! 4999}`, or 404 for a SKU it does not know.
//!
//! ```sh
//! cargo run --example price_service -- 127.0.0.1:18471 examples/orders/prices.json
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

type Prices = Arc<BTreeMap<String, u64>>;

async fn price(State(prices): State<Prices>, Path(sku): Path<String>) -> (StatusCode, Json<Value>) {
    match prices.get(&sku) {
        Some(cents) => (
            StatusCode::OK,
            Json(json!({"sku": sku, "unit_cents": cents})),
        ),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no price for {sku}")})),
        ),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(file)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: price_service ADDRESS PRICES.json");
    };
    let text =
        std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{file}: cannot read: {e}"))?;
    let prices: Prices = Arc::new(
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{file}: not an object of SKU to cents: {e}"))?,
    );
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!("{listen}: cannot listen: {e}"))?;
    eprintln!("price service on http://{listen}");
    let app = Router::new()
        .route("/prices/{sku}", get(price))
        .with_state(prices);
    axum::serve(listener, app).await?;
    Ok(())
}
