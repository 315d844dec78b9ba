// The conformance plugin: one behaviour, specified in plugins/CONFORMANCE.md
// and implemented in every guest language, so that one test can check each
// language's build (and SDK) byte for byte against the same expectations.
package main

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"runnel.dev/runnel"
	"runnel.dev/runnel/config"
	"runnel.dev/runnel/http"
	"runnel.dev/runnel/kv"
)

const failNUsage = `fail-n needs a payload {"n": <integer 0..4294967295>}`

// failN is n of a fail-n payload: a JSON number with an integer value in
// uint32's range (2, 2.0 and 2e0 alike). encoding/json keeps the last of
// repeated members, as the spec asks.
func failN(event *runnel.Event) (uint32, bool) {
	var body map[string]any
	if err := json.Unmarshal(event.Payload, &body); err != nil {
		return 0, false
	}
	n, ok := body["n"].(float64)
	if !ok || n != math.Trunc(n) || n < 0 || n > math.MaxUint32 {
		return 0, false
	}
	return uint32(n), true
}

// quote is s as a JSON string, escaped as Rust's serde_json escapes it
// (CONFORMANCE.md): encoding/json would also escape U+2028 and U+2029.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if r < 0x20 {
				fmt.Fprintf(&b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

func orNone(value string, ok bool) string {
	if !ok {
		return "none"
	}
	return value
}

type conformance struct{}

func (conformance) Handle(event *runnel.Event) error {
	switch event.Name {
	case "echo":
		return runnel.Emit("echoed", event.Payload)
	case "inherit":
		return runnel.Emit("child", []byte(event.ID))
	case "batch":
		return runnel.EmitAll(
			runnel.NewEvent{Name: "first", Payload: []byte("1")},
			runnel.NewEvent{Name: "second", Payload: []byte("2")},
		)
	case "fail-n":
		n, ok := failN(event)
		if !ok {
			return runnel.Reject(failNUsage)
		}
		if attempts := event.Meta.Attempts; attempts <= n {
			return runnel.Retryf("attempt %d of %d fails", attempts, n)
		}
		return runnel.Emit("recovered", fmt.Appendf(nil, `{"attempts":%d}`, event.Meta.Attempts))
	case "reject":
		return runnel.Reject("rejected by conformance")
	case "retry":
		return runnel.Retry("retry requested")
	case "log":
		if !utf8.Valid(event.Payload) {
			return runnel.Reject("log needs a UTF-8 payload")
		}
		runnel.Info(string(event.Payload))
		runnel.Warn("conformance warn line")
		return nil
	case "meta":
		m := event.Meta
		payload := fmt.Sprintf(`{"id":%s,"name":%s,"correlation_id":%s,"attempts":%d,"is_dry_run":%t,"created_at_utc":%s}`,
			quote(event.ID), quote(event.Name), quote(m.CorrelationID), m.Attempts, m.IsDryRun, quote(m.CreatedAtUTC))
		return runnel.Emit("meta-echoed", []byte(payload))
	case "no-route":
		return runnel.Emit("unrouted", nil)
	case "trap":
		panic("trap requested")
	case "kv-count":
		bucket, err := kv.Open("conformance")
		if err != nil {
			return err
		}
		n, err := bucket.Increment("count", 1)
		if err != nil {
			return err
		}
		got, ok, err := bucket.Get("count")
		if err != nil {
			return err
		}
		text := strconv.FormatInt(n, 10)
		if !ok || string(got) != text {
			return runnel.Reject("read its own write wrong")
		}
		return runnel.Emit("counted", []byte(text))
	case "kv-lost":
		bucket, err := kv.Open("conformance")
		if err != nil {
			return err
		}
		if err := bucket.Set("lost", []byte("x")); err != nil {
			return err
		}
		return runnel.Reject("kv write then reject")
	case "kv-check":
		bucket, err := kv.Open("conformance")
		if err != nil {
			return err
		}
		lost, err := bucket.Exists("lost")
		if err != nil {
			return err
		}
		count, ok, err := bucket.Get("count")
		if err != nil {
			return err
		}
		return runnel.Emit("kv-checked", fmt.Appendf(nil, "lost=%t count=%s", lost, orNone(string(count), ok)))
	case "kv-denied":
		_, err := kv.Open("other")
		return err
	case "config":
		runnel.Info("token=" + orNone(config.Get("token")))
		greeting := orNone(config.Get("greeting"))
		missing := orNone(config.Get("missing"))
		return runnel.Emit("configured", []byte("greeting="+greeting+" missing="+missing))
	case "config-reject":
		token, _ := config.Get("token")
		return runnel.Reject("bad token " + token)
	case "http-get":
		base, err := config.Require("http_base")
		if err != nil {
			return err
		}
		r, err := http.Get(base + "/hello")
		if err != nil {
			return runnel.Retry("http failed")
		}
		header := orNone(r.Header("x-conformance"))
		return runnel.Emit("http-got", fmt.Appendf(nil, "status=%d x-conformance=%s body=%s", r.Status, header, r.Text()))
	case "http-post":
		base, err := config.Require("http_base")
		if err != nil {
			return err
		}
		r, err := http.Post(base+"/echo", "", event.Payload)
		if err != nil {
			return runnel.Retry("http failed")
		}
		return runnel.Emit("http-posted", fmt.Appendf(nil, "status=%d %s", r.Status, r.Text()))
	case "http-denied", "http-redirect":
		key, path := "http_denied", "/hello"
		if event.Name == "http-redirect" {
			key, path = "http_base", "/away"
		}
		base, err := config.Require(key)
		if err != nil {
			return err
		}
		if _, err := http.Get(base + path); err != nil {
			return runnel.Reject("http denied")
		}
		return runnel.Retry("expected a denial")
	}
	return nil
}

func (conformance) HandleError(failure runnel.Failure, event *runnel.Event) {
	id := "none"
	if event != nil {
		id = event.ID
	}
	runnel.Error(fmt.Sprintf("handle-error: %s attempt %d last=%t event=%s",
		failure.Kind, failure.Attempt, failure.IsLastAttempt, id))
}

func init() { runnel.Register(conformance{}) }

func main() {}
