// Package config is the plugin's configuration (wasi:config/store): its
// [plugin.config] table, plain values and secrets the host read from the
// environment or files when it loaded the plugin. Secrets never appear in
// the host's logs, failure reasons or dead letters.
//
//	endpoint, err := config.Require("endpoint")
//	if err != nil {
//		return err // a retry naming the key
//	}
package config

import (
	"strconv"

	"runnel.dev/runnel"
	store "runnel.dev/runnel/internal/wit/imports/wasi_config_store"
)

// Get is the value of key; ok is false when the config does not set it.
func Get(key string) (value string, ok bool) {
	r := store.Get(key)
	if r.IsErr() || r.Ok().IsNone() {
		return "", false
	}
	return r.Ok().Some(), true
}

// Require is the value of key, or a retry naming the key when it is not
// set (the config can be fixed and reloaded before the attempts run out).
func Require(key string) (string, error) {
	if value, ok := Get(key); ok {
		return value, nil
	}
	return "", runnel.Retry("config key " + strconv.Quote(key) + " is not set: add it under the plugin's [plugin.config]")
}

// All is every key and value.
func All() map[string]string {
	all := map[string]string{}
	r := store.GetAll()
	if r.IsErr() {
		return all
	}
	for _, kv := range r.Ok() {
		all[kv.F0] = kv.F1
	}
	return all
}
