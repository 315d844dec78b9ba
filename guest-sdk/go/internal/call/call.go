// Package call holds what the SDK knows about the call in progress: the
// id of the event being handled, and the idempotency keys handed out.
// A component instance handles one call at a time, so plain variables do.
package call

import "strconv"

var (
	eventID string
	keys    uint32
)

// Begin starts a call for the event `id` ("" when there is none, as in
// handle-error before the last attempt).
func Begin(id string) {
	eventID = id
	keys = 0
}

// NextIdempotencyKey is the event id for the call's first request other
// than GET and HEAD, then "<id>:2", "<id>:3", ...: the same requests in the
// same order get the same keys on every attempt (the Rust SDK's rule).
// ok is false outside an event.
func NextIdempotencyKey() (key string, ok bool) {
	if eventID == "" {
		return "", false
	}
	keys++
	if keys == 1 {
		return eventID, true
	}
	return eventID + ":" + strconv.FormatUint(uint64(keys), 10), true
}
