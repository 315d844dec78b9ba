// Package http is outbound HTTP (wasi:http), to the hosts the plugin's
// config grants (http = ["https://api.example.com"] under [plugin.grants]).
// Go's net/http cannot send requests from wasip1; this package can.
//
//	resp, err := http.Get(base + "/prices/" + sku)
//	if err != nil {
//		return err // a denial is a reject, anything else a retry
//	}
//	var price Price
//	err = resp.JSON(&price)
//
// Requests are effects outside the event system: an event redelivered
// after a crash, or retried, sends them again. So every request other than
// GET and HEAD carries an Idempotency-Key header unless the plugin sets its
// own: the id of the event being handled for the call's first such
// request, "<id>:2", "<id>:3", ... for the next ones, the same on every
// attempt that sends the same requests in the same order. In a dry run (a
// shadow, a replay) the host refuses everything but GET and HEAD.
//
// Redirects are followed (up to MaxRedirects); each hop must be granted
// too. Every wait ends at the call's time limit.
package http

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
	"runnel.dev/runnel"
	"runnel.dev/runnel/internal/call"
	handler "runnel.dev/runnel/internal/wit/imports/wasi_http_outgoing_handler"
	types "runnel.dev/runnel/internal/wit/imports/wasi_http_types"
	streams "runnel.dev/runnel/internal/wit/imports/wasi_io_streams"
)

// MaxRedirects is how many redirects are followed before a request fails.
const MaxRedirects = 5

// Kind is what kind of failure an Error is.
type Kind uint8

const (
	// Failed: connection refused, a DNS failure, a body too big, an error
	// status from Response.ErrorForStatus. A retry from Handle.
	Failed Kind = iota
	// Denied: the host refused the request (not granted, or not GET/HEAD
	// in a dry run); its log says which grant would allow it. A reject
	// from Handle, since no retry would change it.
	Denied
	// TimedOut: no response in time (the call's limit or the request's).
	// A retry from Handle.
	TimedOut
)

// Error is why a request failed. Returned from Handle, a Denied error is
// a reject and the others are retries (Unwrap gives that verdict).
type Error struct {
	Kind    Kind
	Message string
}

func (e *Error) Error() string {
	switch e.Kind {
	case Denied:
		return "HTTP request denied: " + e.Message
	case TimedOut:
		return "HTTP request timed out: " + e.Message
	default:
		return "HTTP request failed: " + e.Message
	}
}

// Unwrap is the verdict the error gives from Handle.
func (e *Error) Unwrap() error {
	if e.Kind == Denied {
		return runnel.Reject(e.Error())
	}
	return runnel.Retry(e.Error())
}

func failed(format string, args ...any) *Error {
	return &Error{Kind: Failed, Message: fmt.Sprintf(format, args...)}
}

// Header is one header line; names keep the case they were given.
type Header struct {
	Name, Value string
}

// Request is a request to build and send.
type Request struct {
	Method  string
	URL     string
	Headers []Header
	Body    []byte
	// Timeout bounds the connection and then each part of the response
	// (0: only the call's time limit).
	Timeout time.Duration
}

// NewRequest is a request with any method ("PATCH", ...).
func NewRequest(method, url string) *Request {
	return &Request{Method: strings.ToUpper(method), URL: url}
}

// Get GETs url.
func Get(url string) (*Response, error) { return NewRequest("GET", url).Send() }

// Post POSTs body to url with the given content type ("" for none).
func Post(url, contentType string, body []byte) (*Response, error) {
	r := NewRequest("POST", url)
	if contentType != "" {
		r.Header("content-type", contentType)
	}
	r.Body = body
	return r.Send()
}

// Header adds a header and returns r, to chain.
func (r *Request) Header(name, value string) *Request {
	r.Headers = append(r.Headers, Header{name, value})
	return r
}

// JSON sets v as the body, as JSON, and its content type.
func (r *Request) JSON(v any) (*Request, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return r, failed("encoding the body: %v", err)
	}
	r.Body = body
	return r.Header("content-type", "application/json"), nil
}

func (r *Request) has(name string) bool {
	for _, h := range r.Headers {
		if strings.EqualFold(h.Name, name) {
			return true
		}
	}
	return false
}

func (r *Request) without(names ...string) {
	kept := r.Headers[:0]
	for _, h := range r.Headers {
		drop := false
		for _, n := range names {
			drop = drop || strings.EqualFold(h.Name, n)
		}
		if !drop {
			kept = append(kept, h)
		}
	}
	r.Headers = kept
}

// Send sends the request, following redirects, and reads the whole
// response. The error is an *Error.
func (r *Request) Send() (*Response, error) {
	req := *r
	req.Headers = append([]Header(nil), r.Headers...)
	if req.Method != "GET" && req.Method != "HEAD" && !req.has("idempotency-key") {
		if key, ok := call.NextIdempotencyKey(); ok {
			req.Headers = append(req.Headers, Header{"idempotency-key", key})
		}
	}
	for range MaxRedirects + 1 {
		resp, err := req.sendOnce()
		if err != nil {
			return nil, err
		}
		location, ok := resp.Header("location")
		switch {
		case !ok || !isRedirect(resp.Status):
			return resp, nil
		}
		next, err := resolve(req.URL, location)
		if err != nil {
			return nil, failed("%s: redirect to %q: %v", req.URL, location, err)
		}
		// Credentials are for the origin they were set for.
		if origin(next) != origin(req.URL) {
			req.without("authorization", "cookie", "proxy-authorization")
		}
		req.URL = next
		// As browsers do: a 303, or a 301/302 after a POST, becomes a GET
		// without a body.
		if resp.Status == 303 || ((resp.Status == 301 || resp.Status == 302) && req.Method == "POST") {
			req.Method = "GET"
			req.Body = nil
			req.without("content-type", "content-length")
		}
	}
	return nil, failed("%s: more than %d redirects", req.URL, MaxRedirects)
}

func isRedirect(status uint16) bool {
	switch status {
	case 301, 302, 303, 307, 308:
		return true
	}
	return false
}

func (r *Request) sendOnce() (*Response, error) {
	u, err := url.Parse(r.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, failed("%q is not an absolute http(s) URL", r.URL)
	}
	bad := func(what string) error { return failed("%s: invalid %s", r.URL, what) }
	headers := types.MakeFields()
	for _, h := range r.Headers {
		if res := headers.Append(h.Name, []byte(h.Value)); res.IsErr() {
			headers.Drop()
			return nil, failed("header %q: invalid", h.Name)
		}
	}
	request := types.MakeOutgoingRequest(headers)
	if request.SetMethod(method(r.Method)).IsErr() {
		request.Drop()
		return nil, bad("method")
	}
	scheme := types.MakeSchemeHttp()
	if u.Scheme == "https" {
		scheme = types.MakeSchemeHttps()
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery != "" || u.ForceQuery {
		path += "?" + u.RawQuery
	}
	switch {
	case request.SetScheme(witTypes.Some(scheme)).IsErr():
		request.Drop()
		return nil, bad("scheme")
	case request.SetAuthority(witTypes.Some(u.Host)).IsErr():
		request.Drop()
		return nil, bad("host")
	case request.SetPathWithQuery(witTypes.Some(path)).IsErr():
		request.Drop()
		return nil, bad("path")
	}
	bodyResult := request.Body()
	if bodyResult.IsErr() {
		request.Drop()
		return nil, bad("body")
	}
	body := bodyResult.Ok()
	options := witTypes.None[*types.RequestOptions]()
	if r.Timeout > 0 {
		o := types.MakeRequestOptions()
		ns := witTypes.Some(uint64(r.Timeout.Nanoseconds()))
		o.SetConnectTimeout(ns)
		o.SetFirstByteTimeout(ns)
		o.SetBetweenBytesTimeout(ns)
		options = witTypes.Some(o)
	}
	handled := handler.Handle(request, options)
	if handled.IsErr() {
		body.Drop()
		return nil, errorOf(r.URL, handled.Err())
	}
	pending := handled.Ok()
	defer pending.Drop()
	// The body goes out while the host sends the request. If the host
	// refused the request, the body's stream is closed: then the
	// response's error says why, not the write's.
	sent := sendBody(body, r.Body)
	pollable := pending.Subscribe()
	pollable.Block()
	pollable.Drop()
	got := pending.Get()
	if got.IsNone() || got.Some().IsErr() {
		return nil, failed("%s: no response", r.URL)
	}
	if inner := got.Some().Ok(); inner.IsErr() {
		return nil, errorOf(r.URL, inner.Err())
	}
	response := got.Some().Ok().Ok()
	defer response.Drop()
	if sent != "" {
		return nil, failed("%s: sending the body: %s", r.URL, sent)
	}
	fields := response.Headers()
	var respHeaders []Header
	for _, e := range fields.Entries() {
		respHeaders = append(respHeaders, Header{e.F0, string(e.F1)})
	}
	fields.Drop()
	status := response.Status()
	consumed := response.Consume()
	if consumed.IsErr() {
		return nil, bad("response body")
	}
	incoming := consumed.Ok()
	data, err := readAll(r.URL, incoming)
	types.IncomingBodyFinish(incoming).Drop()
	if err != nil {
		return nil, err
	}
	return &Response{Status: status, Headers: respHeaders, Body: data}, nil
}

// readAll reads a response body to its end.
func readAll(url string, incoming *types.IncomingBody) ([]byte, error) {
	opened := incoming.Stream()
	if opened.IsErr() {
		return nil, failed("%s: invalid response body", url)
	}
	stream := opened.Ok()
	defer stream.Drop()
	var data []byte
	for {
		chunk := stream.BlockingRead(64 * 1024)
		if chunk.IsOk() {
			data = append(data, chunk.Ok()...)
			continue
		}
		e := chunk.Err()
		if e.Tag() == streams.StreamError_Closed {
			return data, nil
		}
		ioErr := e.LastOperationFailed()
		defer ioErr.Drop()
		if code := types.HttpErrorCode(ioErr); code.IsSome() {
			return nil, errorOf(url, code.Some())
		}
		return nil, failed("%s: %s", url, ioErr.ToDebugString())
	}
}

// sendBody writes a request body in the chunks a stream accepts, then
// ends it; "" when all went out, else why not.
func sendBody(body *types.OutgoingBody, data []byte) string {
	opened := body.Write()
	if opened.IsErr() {
		body.Drop()
		return "no body stream"
	}
	out := opened.Ok()
	for len(data) > 0 {
		n := min(len(data), 4096)
		if out.BlockingWriteAndFlush(data[:n]).IsErr() {
			out.Drop()
			body.Drop()
			return "the stream closed"
		}
		data = data[n:]
	}
	out.Drop()
	if types.OutgoingBodyFinish(body, witTypes.None[*types.Fields]()).IsErr() {
		return "finishing the body failed"
	}
	return ""
}

func method(m string) types.Method {
	switch m {
	case "GET":
		return types.MakeMethodGet()
	case "HEAD":
		return types.MakeMethodHead()
	case "POST":
		return types.MakeMethodPost()
	case "PUT":
		return types.MakeMethodPut()
	case "DELETE":
		return types.MakeMethodDelete()
	case "PATCH":
		return types.MakeMethodPatch()
	case "OPTIONS":
		return types.MakeMethodOptions()
	}
	return types.MakeMethodOther(m)
}

func errorOf(url string, code types.ErrorCode) *Error {
	switch code.Tag() {
	case types.ErrorCode_HttpRequestDenied:
		return &Error{Denied, url + " (not granted by the plugin's grants.http, or not GET/HEAD in a dry run)"}
	case types.ErrorCode_ConnectionLimitReached:
		return &Error{Denied, url + ": too many requests in one call (http_limits.max_requests_per_call)"}
	case types.ErrorCode_ConnectionTimeout, types.ErrorCode_ConnectionReadTimeout,
		types.ErrorCode_ConnectionWriteTimeout, types.ErrorCode_HttpResponseTimeout:
		return &Error{TimedOut, fmt.Sprintf("%s: error code %d", url, code.Tag())}
	}
	return failed("%s: error code %d (wasi:http/types error-code)", url, code.Tag())
}

// resolve is a redirect's Location resolved against base (RFC 3986 §5.2).
func resolve(base, location string) (string, error) {
	b, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	l, err := url.Parse(location)
	if err != nil {
		return "", err
	}
	return b.ResolveReference(l).String(), nil
}

// origin is "scheme://host:port" of a URL, lowercase.
func origin(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return strings.ToLower(u.Scheme + "://" + u.Host)
}

// Response is a whole response.
type Response struct {
	Status uint16
	// Names in lowercase, as received.
	Headers []Header
	Body    []byte
}

// Header is the first value of a header, by case-insensitive name.
func (r *Response) Header(name string) (string, bool) {
	for _, h := range r.Headers {
		if strings.EqualFold(h.Name, name) {
			return h.Value, true
		}
	}
	return "", false
}

// Text is the body as text (invalid UTF-8 replaced by U+FFFD).
func (r *Response) Text() string {
	if utf8.Valid(r.Body) {
		return string(r.Body)
	}
	return strings.ToValidUTF8(string(r.Body), "\uFFFD")
}

// JSON decodes the body into v; a body that does not decode is a failure
// (a retry from Handle), since the server may answer better next time.
func (r *Response) JSON(v any) error {
	if err := json.Unmarshal(r.Body, v); err != nil {
		return failed("response is not the expected JSON: %v", err)
	}
	return nil
}

// ErrorForStatus is r, or an error for a 4xx or 5xx status.
func (r *Response) ErrorForStatus() (*Response, error) {
	if r.Status >= 400 && r.Status <= 599 {
		text := []rune(r.Text())
		if len(text) > 200 {
			text = text[:200]
		}
		return nil, failed("status %d: %s", r.Status, string(text))
	}
	return r, nil
}
