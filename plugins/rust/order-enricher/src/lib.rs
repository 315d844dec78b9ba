//! The demo's business logic: prices an order and emits `order.enriched`.
//!
//! - a payload that is not an order is rejected (dead-lettered at once);
//! - an out-of-stock SKU is a transient failure: retried, then dead-lettered;
//! - anything else emits `order.enriched` with the total.
//!
//! Two optional settings in its `[plugin.config]` make it act:
//! `price_service` (a base URL, granted in `grants.http`): the unit price
//! comes from `GET {price_service}/prices/{sku}` instead of the order; and
//! `customer_counts` (a bucket, granted in `grants.kv`): each order adds one
//! to `orders:<customer>` there, exactly once however often the event is
//! delivered.
use runnel_guest::{config, emit_json, export_plugin, http, kv, log, Event, Failure, Outcome, Plugin, Refusal};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Order {
    order_id: String,
    sku: String,
    quantity: u32,
    /// The price, when there is no price service to ask.
    #[serde(default)]
    unit_cents: Option<u64>,
    #[serde(default)]
    customer: Option<String>,
}

#[derive(Deserialize)]
struct Price {
    unit_cents: u64,
}

/// The unit price: from the price service when one is configured.
fn unit_cents(order: &Order) -> Result<u64, Refusal> {
    let Some(base) = config::get("price_service") else {
        return order.unit_cents.ok_or_else(|| {
            Refusal::reject(format!("order {} has no unit_cents and no price service is configured", order.order_id))
        });
    };
    let response = http::get(&format!("{base}/prices/{}", order.sku))?;
    match response.status {
        200 => Ok(response.json::<Price>()?.unit_cents),
        404 => Err(Refusal::reject(format!("no price for {} (order {})", order.sku, order.order_id))),
        status => Err(Refusal::retry(format!("price service answered {status} for {}", order.sku))),
    }
}

#[derive(Serialize)]
struct Enriched<'a> {
    order_id: &'a str,
    sku: &'a str,
    total_cents: u64,
    priority: bool,
}

struct OrderEnricher;

impl Plugin for OrderEnricher {
    fn handle(event: Event) -> Outcome {
        let order: Order = event.json()?;
        if order.sku == "OUT-OF-STOCK" {
            return Err(Refusal::retry(format!(
                "inventory has no stock for order {}",
                order.order_id
            )));
        }
        let total_cents = unit_cents(&order)? * u64::from(order.quantity);
        if let Some(bucket) = config::get("customer_counts") {
            let customer = order.customer.as_deref().unwrap_or("unknown");
            kv::open(&bucket)?.increment(&format!("orders:{customer}"), 1)?;
        }
        log::info(&format!("order {} totals {total_cents} cents", order.order_id));
        emit_json(
            "order.enriched",
            &Enriched {
                order_id: &order.order_id,
                sku: &order.sku,
                total_cents,
                priority: total_cents >= 100_000,
            },
        )
    }

    fn handle_error(failure: Failure, event: Option<Event>) {
        match event {
            Some(e) => log::error(&format!(
                "giving up on {} after {} attempts: {}",
                e.id, failure.attempt, failure.message
            )),
            None => log::warn(&format!(
                "attempt {} failed: {}",
                failure.attempt, failure.message
            )),
        }
    }
}

export_plugin!(OrderEnricher);
