// Package kv is key-value state (wasi:keyvalue), committed exactly once
// with the event.
//
// A plugin opens the buckets its config grants (kv = ["counts"] under
// [plugin.grants]). Within a call, reads see the committed state plus the
// call's own writes; the writes take effect only if Handle returns nil, in
// one step with the events it emitted and the acknowledgement of the
// event. A failed, trapped or retried attempt leaves nothing behind, and
// if another call changed a key this call read, the host runs this call
// again on fresh state (not counted as an attempt). Dry runs never write.
//
//	counts, err := kv.Open("counts")
//	if err != nil {
//		return err // a retry naming the bucket
//	}
//	n, err := counts.Increment("count:"+event.Name, 1)
package kv

import (
	"encoding/json"
	"fmt"
	"strconv"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
	"runnel.dev/runnel/internal/wit/imports/wasi_keyvalue_atomics"
	"runnel.dev/runnel/internal/wit/imports/wasi_keyvalue_batch"
	store "runnel.dev/runnel/internal/wit/imports/wasi_keyvalue_store"
)

// Error is why an operation failed: the bucket and the host's reason.
// Returned from Handle it is a retry.
type Error struct {
	Bucket string
	Reason string
}

func (e *Error) Error() string {
	return "key-value bucket " + strconv.Quote(e.Bucket) + ": " + e.Reason
}

func wrap(bucket string, e store.Error) *Error {
	var reason string
	switch e.Tag() {
	case store.Error_NoSuchStore:
		reason = "no such store"
	case store.Error_AccessDenied:
		reason = "not granted: add kv = [" + strconv.Quote(bucket) + "] under the plugin's [plugin.grants]"
	default:
		reason = e.Other()
	}
	return &Error{Bucket: bucket, Reason: reason}
}

// Bucket is an open bucket.
type Bucket struct {
	name  string
	inner *store.Bucket
}

// opened holds the buckets this instance opened. A handle lives as long as
// the instance, so a later call's Open of the same bucket makes no host
// call. A refusal is not kept: the next Open asks again.
var opened = map[string]*Bucket{}

// Open opens a bucket the plugin's config grants.
func Open(name string) (*Bucket, error) {
	if b, ok := opened[name]; ok {
		return b, nil
	}
	r := store.Open(name)
	if r.IsErr() {
		return nil, wrap(name, r.Err())
	}
	b := &Bucket{name: name, inner: r.Ok()}
	opened[name] = b
	return b, nil
}

// Name is the bucket's name, as opened.
func (b *Bucket) Name() string { return b.name }

// Get is the value of key; ok is false when it is not set.
func (b *Bucket) Get(key string) (value []byte, ok bool, err error) {
	r := b.inner.Get(key)
	if r.IsErr() {
		return nil, false, wrap(b.name, r.Err())
	}
	if v := r.Ok(); v.IsSome() {
		return v.Some(), true, nil
	}
	return nil, false, nil
}

// Set sets key to value when the call succeeds.
func (b *Bucket) Set(key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	if r := b.inner.Set(key, value); r.IsErr() {
		return wrap(b.name, r.Err())
	}
	return nil
}

// Delete removes key when the call succeeds.
func (b *Bucket) Delete(key string) error {
	if r := b.inner.Delete(key); r.IsErr() {
		return wrap(b.name, r.Err())
	}
	return nil
}

// Exists is whether key is set.
func (b *Bucket) Exists(key string) (bool, error) {
	r := b.inner.Exists(key)
	if r.IsErr() {
		return false, wrap(b.name, r.Err())
	}
	return r.Ok(), nil
}

// Increment adds delta to the integer at key (0 when not set) and returns
// the sum; the value is stored as decimal text.
func (b *Bucket) Increment(key string, delta int64) (int64, error) {
	r := wasi_keyvalue_atomics.Increment(b.inner, key, delta)
	if r.IsErr() {
		return 0, wrap(b.name, r.Err())
	}
	return r.Ok(), nil
}

// GetMany is the values of keys, in order; nil where a key is not set.
func (b *Bucket) GetMany(keys []string) ([][]byte, error) {
	r := wasi_keyvalue_batch.GetMany(b.inner, keys)
	if r.IsErr() {
		return nil, wrap(b.name, r.Err())
	}
	pairs := r.Ok()
	values := make([][]byte, len(pairs))
	for i, p := range pairs {
		if p.F1.IsSome() {
			values[i] = p.F1.Some()
		}
	}
	return values, nil
}

// Keys is every key of the bucket (read a page at a time underneath).
func (b *Bucket) Keys() ([]string, error) {
	var keys []string
	cursor := witTypes.None[string]()
	for {
		r := b.inner.ListKeys(cursor)
		if r.IsErr() {
			return nil, wrap(b.name, r.Err())
		}
		page := r.Ok()
		keys = append(keys, page.Keys...)
		if page.Cursor.IsNone() {
			return keys, nil
		}
		cursor = page.Cursor
	}
}

// GetJSON decodes the value of key into v; ok is false when it is not set.
func (b *Bucket) GetJSON(key string, v any) (ok bool, err error) {
	value, ok, err := b.Get(key)
	if err != nil || !ok {
		return ok, err
	}
	if err := json.Unmarshal(value, v); err != nil {
		return true, &Error{Bucket: b.name, Reason: fmt.Sprintf("value of key %q is not the expected JSON: %v", key, err)}
	}
	return true, nil
}

// SetJSON sets key to v as JSON when the call succeeds.
func (b *Bucket) SetJSON(key string, v any) error {
	value, err := json.Marshal(v)
	if err != nil {
		return &Error{Bucket: b.name, Reason: fmt.Sprintf("cannot encode the value of key %q: %v", key, err)}
	}
	return b.Set(key, value)
}
