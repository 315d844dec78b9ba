// The demo's business logic: prices an order and emits `order.enriched`.
//
// The JavaScript twin of plugins/rust/order-enricher, with the same verdicts,
// logs and output bytes:
// - a payload that is not an order is rejected (dead-lettered at once);
// - an out-of-stock SKU is a transient failure: retried, then dead-lettered;
// - anything else emits `order.enriched` with the total.
import { handler, errorHandler, emit, log, Reject, Retry } from "../../../guest-sdk/js/runnel.js";

const U32_MAX = 2 ** 32 - 1;

// One field of the order, checked as Rust's serde checks it. JSON numbers
// are doubles here, so `unit_cents` must be a safe integer (below 2^53),
// where Rust takes any u64.
function field(order, name, kind) {
  if (!Object.hasOwn(order, name)) {
    throw new Reject(`payload is not the expected JSON: missing field \`${name}\``);
  }
  const value = order[name];
  const ok =
    kind === "string"
      ? typeof value === "string"
      : Number.isSafeInteger(value) && value >= 0 && (kind === "u64" || value <= U32_MAX);
  if (!ok) {
    throw new Reject(`payload is not the expected JSON: invalid \`${name}\`: ${JSON.stringify(value)}`);
  }
  return value;
}

export const handle = handler((event) => {
  const order = event.json();
  if (order === null || typeof order !== "object" || Array.isArray(order)) {
    throw new Reject("payload is not the expected JSON: expected an order object");
  }
  const orderId = field(order, "order_id", "string");
  const sku = field(order, "sku", "string");
  const quantity = field(order, "quantity", "u32");
  const unitCents = field(order, "unit_cents", "u64");
  if (sku === "OUT-OF-STOCK") {
    throw new Retry(`inventory has no stock for order ${orderId}`);
  }
  // u64 arithmetic, as in Rust (wrapping), exact past 2^53.
  const total = (BigInt(unitCents) * BigInt(quantity)) & 0xffff_ffff_ffff_ffffn;
  log.info(`order ${orderId} totals ${total} cents`);
  // Written by hand so that a total past 2^53 stays exact.
  emit(
    "order.enriched",
    `{"order_id":${JSON.stringify(orderId)},"sku":${JSON.stringify(sku)},` +
      `"total_cents":${total},"priority":${total >= 100000n}}`,
  );
});

export const handleError = errorHandler((failure, event) => {
  if (event !== undefined) {
    log.error(`giving up on ${event.id} after ${failure.attempt} attempts: ${failure.message}`);
  } else {
    log.warn(`attempt ${failure.attempt} failed: ${failure.message}`);
  }
});
