//! The demo's business logic: prices an order and emits `order.enriched`.
//!
//! - a payload that is not an order is rejected (dead-lettered at once);
//! - an out-of-stock SKU is a transient failure: retried, then dead-lettered;
//! - anything else emits `order.enriched` with the total.
use runnel_guest::{emit_json, export_plugin, log, Event, Failure, Outcome, Plugin, Refusal};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Order {
    order_id: String,
    sku: String,
    quantity: u32,
    unit_cents: u64,
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
        let total_cents = order.unit_cents * u64::from(order.quantity);
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
