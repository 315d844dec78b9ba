/*
 * The demo's business logic: prices an order and emits `order.enriched`.
 *
 * The C twin of plugins/rust/order-enricher, with the same verdicts, logs and
 * output bytes:
 * - a payload that is not an order is rejected (dead-lettered at once);
 * - an out-of-stock SKU is a transient failure: retried, then dead-lettered;
 * - anything else emits `order.enriched` with the total.
 */
#include <inttypes.h>
#include <stdlib.h>

#include "runnel.h"

#define NOT_AN_ORDER "payload is not the expected JSON: "

runnel_verdict_t runnel_handle(const runnel_event_t *event) {
    runnel_json_t order = runnel_json_parse(event->payload.ptr, event->payload.len);
    if (order.type == RUNNEL_JSON_INVALID)
        return runnel_reject(NOT_AN_ORDER "not JSON");
    if (order.type != RUNNEL_JSON_OBJECT)
        return runnel_reject(NOT_AN_ORDER "expected an order object");

    runnel_json_t order_id, sku, quantity, unit_cents;
    const char *missing = !runnel_json_get(order, "order_id", &order_id) ? "order_id"
                          : !runnel_json_get(order, "sku", &sku)         ? "sku"
                          : !runnel_json_get(order, "quantity", &quantity) ? "quantity"
                          : !runnel_json_get(order, "unit_cents", &unit_cents) ? "unit_cents"
                                                                          : NULL;
    if (missing)
        return runnel_reject(NOT_AN_ORDER "missing field `%s`", missing);
    if (order_id.type != RUNNEL_JSON_STRING)
        return runnel_reject(NOT_AN_ORDER "invalid `order_id`");
    if (sku.type != RUNNEL_JSON_STRING)
        return runnel_reject(NOT_AN_ORDER "invalid `sku`");
    uint64_t qty, unit;
    if (!runnel_json_uint(quantity, UINT32_MAX, &qty))
        return runnel_reject(NOT_AN_ORDER "invalid `quantity`");
    if (!runnel_json_uint(unit_cents, UINT64_MAX, &unit))
        return runnel_reject(NOT_AN_ORDER "invalid `unit_cents`");

    size_t id_len, sku_len;
    char *id = runnel_json_string(order_id, &id_len);
    char *sku_text = runnel_json_string(sku, &sku_len);
    runnel_verdict_t verdict;
    if (runnel_json_string_is(sku, "OUT-OF-STOCK")) {
        verdict = runnel_retry("inventory has no stock for order %s", id);
    } else {
        uint64_t total = unit * qty; /* wraps like Rust's u64 in release */
        runnel_log_info("order %s totals %" PRIu64 " cents", id, total);
        runnel_buf_t out = RUNNEL_BUF_INIT;
        runnel_buf_append(&out, "{\"order_id\":", 12);
        runnel_buf_json_string(&out, id, id_len);
        runnel_buf_append(&out, ",\"sku\":", 7);
        runnel_buf_json_string(&out, sku_text, sku_len);
        runnel_buf_printf(&out, ",\"total_cents\":%" PRIu64 ",\"priority\":%s}", total,
                          total >= 100000 ? "true" : "false");
        verdict = runnel_emit("order.enriched", out.ptr, out.len);
        runnel_buf_free(&out);
    }
    free(id);
    free(sku_text);
    return verdict;
}

void runnel_handle_error(const runnel_failure_t *failure, const runnel_event_t *event) {
    if (event)
        runnel_log_error("giving up on %s after %u attempts: %s", event->id.ptr, failure->attempt,
                         failure->message.ptr);
    else
        runnel_log_warn("attempt %u failed: %s", failure->attempt, failure->message.ptr);
}
