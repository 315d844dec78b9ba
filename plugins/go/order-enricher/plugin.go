// The demo's business logic: prices an order and emits order.enriched.
//
// The Go twin of plugins/rust/order-enricher's pricing from unit_cents
// (like the Python, JavaScript and C twins), with the same verdicts, logs
// and output bytes:
//   - a payload that is not an order is rejected (dead-lettered at once);
//   - an out-of-stock SKU is a transient failure: retried, then dead-lettered;
//   - anything else emits order.enriched with the total.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"

	"runnel.dev/runnel"
)

const notAnOrder = "payload is not the expected JSON: "

// order is the payload; pointers tell a missing field from a zero one.
// encoding/json refuses what Rust's serde refuses here: a fraction, a
// negative or too large quantity or price, a string where a number goes.
type order struct {
	OrderID   *string `json:"order_id"`
	SKU       *string `json:"sku"`
	Quantity  *uint32 `json:"quantity"`
	UnitCents *uint64 `json:"unit_cents"`
}

type enriched struct {
	OrderID    string `json:"order_id"`
	SKU        string `json:"sku"`
	TotalCents uint64 `json:"total_cents"`
	Priority   bool   `json:"priority"`
}

type enricher struct{}

func (enricher) Handle(event *runnel.Event) error {
	payload := bytes.TrimSpace(event.Payload)
	if !json.Valid(payload) {
		return runnel.Reject(notAnOrder + "not JSON")
	}
	if len(payload) == 0 || payload[0] != '{' {
		return runnel.Reject(notAnOrder + "expected an order object")
	}
	var o order
	if err := json.Unmarshal(payload, &o); err != nil {
		return runnel.Reject(notAnOrder + err.Error())
	}
	for _, f := range []struct {
		name    string
		missing bool
	}{
		{"order_id", o.OrderID == nil},
		{"sku", o.SKU == nil},
		{"quantity", o.Quantity == nil},
		{"unit_cents", o.UnitCents == nil},
	} {
		if f.missing {
			return runnel.Rejectf(notAnOrder+"missing field `%s`", f.name)
		}
	}
	if *o.SKU == "OUT-OF-STOCK" {
		return runnel.Retryf("inventory has no stock for order %s", *o.OrderID)
	}
	total := *o.UnitCents * uint64(*o.Quantity) // wraps like Rust's u64 in release
	runnel.Info(fmt.Sprintf("order %s totals %d cents", *o.OrderID, total))
	return runnel.EmitJSON("order.enriched", enriched{
		OrderID:    *o.OrderID,
		SKU:        *o.SKU,
		TotalCents: total,
		Priority:   total >= 100_000,
	})
}

func (enricher) HandleError(failure runnel.Failure, event *runnel.Event) {
	if event != nil {
		runnel.Error(fmt.Sprintf("giving up on %s after %d attempts: %s", event.ID, failure.Attempt, failure.Message))
	} else {
		runnel.Warn(fmt.Sprintf("attempt %d failed: %s", failure.Attempt, failure.Message))
	}
}

func init() { runnel.Register(enricher{}) }

func main() {}
