"""The demo's business logic: prices an order and emits ``order.enriched``.

The Python twin of ``plugins/rust/order-enricher``, with the same verdicts,
logs and output bytes:

- a payload that is not an order is rejected (dead-lettered at once);
- an out-of-stock SKU is a transient failure: retried, then dead-lettered;
- anything else emits ``order.enriched`` with the total.
"""

from typing import Any, Optional

import runnel
from runnel import Event, Failure, Reject, Retry, emit_json, log

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


def field(order: Any, name: str, kind: str, maximum: int = 0) -> Any:
    """One field of the order, checked as Rust's serde checks it."""
    if name not in order:
        raise Reject(f"payload is not the expected JSON: missing field `{name}`")
    value = order[name]
    if kind == "string":
        ok = isinstance(value, str)
    else:  # an unsigned integer no larger than `maximum` (bool is no int here)
        ok = type(value) is int and 0 <= value <= maximum
    if not ok:
        raise Reject(f"payload is not the expected JSON: invalid `{name}`: {value!r}")
    return value


class OrderEnricher(runnel.Plugin):
    def handle(self, event: Event) -> None:
        order = event.json()
        if not isinstance(order, dict):
            raise Reject("payload is not the expected JSON: expected an order object")
        order_id = field(order, "order_id", "string")
        sku = field(order, "sku", "string")
        quantity = field(order, "quantity", "uint", U32_MAX)
        unit_cents = field(order, "unit_cents", "uint", U64_MAX)
        if sku == "OUT-OF-STOCK":
            raise Retry(f"inventory has no stock for order {order_id}")
        total_cents = (unit_cents * quantity) & U64_MAX  # u64, as in Rust
        log.info(f"order {order_id} totals {total_cents} cents")
        emit_json(
            "order.enriched",
            {
                "order_id": order_id,
                "sku": sku,
                "total_cents": total_cents,
                "priority": total_cents >= 100_000,
            },
        )

    def handle_error(self, failure: Failure, event: Optional[Event]) -> None:
        if event is not None:
            log.error(
                f"giving up on {event.id} after {failure.attempt} attempts: {failure.message}"
            )
        else:
            log.warn(f"attempt {failure.attempt} failed: {failure.message}")


WitWorld = runnel.export(OrderEnricher)
