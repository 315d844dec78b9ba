/* Outbound HTTP for Runnel plugins in C: runnel_http_send over the
 * wasi:http bindings wit-bindgen generates (see runnel.h). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "handler.h"
#include "runnel.h"

#define MAX_REDIRECTS 5

static handler_string_t borrowed_str(const char *s, size_t len) {
    return (handler_string_t){(uint8_t *)s, len};
}

/* The verdict for a wasi:http error code: a refusal by the host rejects. */
static runnel_verdict_t failed(const char *url, const wasi_http_types_error_code_t *code) {
    switch (code->tag) {
    case WASI_HTTP_TYPES_ERROR_CODE_HTTP_REQUEST_DENIED:
        return runnel_reject("HTTP request denied: %s (not granted by the plugin's grants.http, "
                             "or not GET/HEAD in a dry run)", url);
    case WASI_HTTP_TYPES_ERROR_CODE_CONNECTION_LIMIT_REACHED:
        return runnel_reject("HTTP request denied: %s: too many requests in one call "
                             "(http_limits.max_requests_per_call)", url);
    case WASI_HTTP_TYPES_ERROR_CODE_CONNECTION_TIMEOUT:
    case WASI_HTTP_TYPES_ERROR_CODE_CONNECTION_READ_TIMEOUT:
    case WASI_HTTP_TYPES_ERROR_CODE_CONNECTION_WRITE_TIMEOUT:
    case WASI_HTTP_TYPES_ERROR_CODE_HTTP_RESPONSE_TIMEOUT:
        return runnel_retry("HTTP request timed out: %s (error code %d)", url, code->tag);
    default:
        return runnel_retry("HTTP request failed: %s (error code %d)", url, code->tag);
    }
}

/* Splits an absolute URL; the path (with the query) starts with '/'. */
static bool split_url(const char *url, bool *https, char **authority, char **path) {
    const char *sep = strstr(url, "://");
    if (!sep) return false;
    size_t scheme_len = (size_t)(sep - url);
    if (scheme_len == 4 && strncasecmp(url, "http", 4) == 0) *https = false;
    else if (scheme_len == 5 && strncasecmp(url, "https", 5) == 0) *https = true;
    else return false;
    const char *rest = sep + 3;
    size_t end = strcspn(rest, "#");
    size_t cut = strcspn(rest, "/?#");
    if (cut == 0) return false;
    *authority = strndup(rest, cut);
    const char *p = rest + cut;
    size_t plen = end - cut;
    *path = malloc(plen + 2);
    size_t at = 0;
    if (plen == 0 || p[0] != '/') (*path)[at++] = '/';
    memcpy(*path + at, p, plen);
    (*path)[at + plen] = '\0';
    return true;
}

/* Whether `location` starts with a scheme ("https://..."). */
static bool has_scheme(const char *location) {
    const char *sep = strstr(location, "://");
    if (!sep || sep == location) return false;
    for (const char *c = location; c < sep; c++)
        if (!isalnum((unsigned char)*c) && !strchr("+-.", *c)) return false;
    return true;
}

/* A redirect's Location resolved against `base` (absolute, "//host/path",
 * "/path", "?query", "relative/path"); malloc'd. */
static char *resolve(const char *base, const char *location) {
    if (has_scheme(location)) return strdup(location);
    bool https;
    char *authority, *path;
    if (!split_url(base, &https, &authority, &path)) return strdup(location);
    runnel_buf_t out = RUNNEL_BUF_INIT;
    const char *scheme = https ? "https" : "http";
    path[strcspn(path, "?")] = '\0';
    if (strncmp(location, "//", 2) == 0) {
        runnel_buf_printf(&out, "%s:%s", scheme, location);
    } else if (location[0] == '/') {
        runnel_buf_printf(&out, "%s://%s%s", scheme, authority, location);
    } else if (location[0] == '?') {
        runnel_buf_printf(&out, "%s://%s%s%s", scheme, authority, path, location);
    } else {
        char *slash = strrchr(path, '/');
        runnel_buf_printf(&out, "%s://%s", scheme, authority);
        runnel_buf_append(&out, path, slash ? (size_t)(slash - path) + 1 : 0);
        runnel_buf_printf(&out, "%s", location);
    }
    runnel_buf_append(&out, "", 1);
    free(authority);
    free(path);
    return out.ptr;
}

/* Whether two URLs have the same scheme and authority. */
static bool same_origin(const char *a, const char *b) {
    bool ha, hb;
    char *aa, *pa, *ab, *pb;
    if (!split_url(a, &ha, &aa, &pa)) return false;
    if (!split_url(b, &hb, &ab, &pb)) {
        free(aa);
        free(pa);
        return false;
    }
    bool same = ha == hb && strcasecmp(aa, ab) == 0;
    free(aa);
    free(pa);
    free(ab);
    free(pb);
    return same;
}

/* Headers a hop drops: credentials when the origin changes, the body's
 * description when the method becomes GET. */
typedef struct {
    bool credentials;
    bool body;
} dropped_t;

static bool is_dropped(const char *name, dropped_t drop) {
    if (drop.credentials && (strcasecmp(name, "authorization") == 0 || strcasecmp(name, "cookie") == 0 ||
                             strcasecmp(name, "proxy-authorization") == 0))
        return true;
    return drop.body && (strcasecmp(name, "content-type") == 0 || strcasecmp(name, "content-length") == 0);
}

static void set_method(wasi_http_types_method_t *m, const char *method) {
    static const char *known[] = {"GET", "HEAD", "POST", "PUT", "DELETE",
                                  "CONNECT", "OPTIONS", "TRACE", "PATCH"};
    for (uint8_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcmp(method, known[i]) == 0) {
            m->tag = i;
            return;
        }
    }
    m->tag = WASI_HTTP_TYPES_METHOD_OTHER;
    m->val.other = borrowed_str(method, strlen(method));
}

static bool add_header(wasi_http_types_own_fields_t fields, const char *name, const char *value) {
    wasi_http_types_field_name_t n = borrowed_str(name, strlen(name));
    wasi_http_types_field_value_t v = {(uint8_t *)value, strlen(value)};
    wasi_http_types_header_error_t err;
    return wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(fields), &n, &v, &err);
}

/* Writes the body and ends it; false if the stream was closed (the host
 * refused the request: the response then says why). */
static bool send_body(wasi_http_types_own_outgoing_body_t body, const uint8_t *bytes, size_t len) {
    wasi_io_streams_own_output_stream_t out;
    if (!wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(body), &out)) {
        wasi_http_types_outgoing_body_drop_own(body);
        return false;
    }
    bool ok = true;
    for (size_t at = 0; ok && at < len; at += 4096) {
        size_t n = len - at < 4096 ? len - at : 4096;
        handler_list_u8_t chunk = {(uint8_t *)bytes + at, n};
        wasi_io_streams_stream_error_t err;
        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(
                wasi_io_streams_borrow_output_stream(out), &chunk, &err)) {
            wasi_io_streams_stream_error_free(&err);
            ok = false;
        }
    }
    /* The stream is the body's child: it goes first. */
    wasi_io_streams_output_stream_drop_own(out);
    wasi_http_types_error_code_t code;
    if (!wasi_http_types_static_outgoing_body_finish(body, NULL, &code)) {
        wasi_http_types_error_code_free(&code);
        return false;
    }
    return ok;
}

static runnel_verdict_t send_once(const char *method, const char *url,
                                  const runnel_http_request_t *req, const char *key,
                                  dropped_t drop, runnel_http_response_t *out) {
    bool https;
    char *authority, *path;
    if (!split_url(url, &https, &authority, &path))
        return runnel_reject("HTTP request failed: \"%s\" is not an absolute http(s) URL", url);
    wasi_http_types_own_fields_t fields = wasi_http_types_constructor_fields();
    bool headers_ok = true;
    for (size_t i = 0; i < req->header_count; i++)
        if (!is_dropped(req->headers[i].name, drop))
            headers_ok &= add_header(fields, req->headers[i].name, req->headers[i].value);
    if (key) headers_ok &= add_header(fields, "idempotency-key", key);
    wasi_http_types_own_outgoing_request_t request = wasi_http_types_constructor_outgoing_request(fields);
    wasi_http_types_borrow_outgoing_request_t r = wasi_http_types_borrow_outgoing_request(request);
    wasi_http_types_method_t m;
    set_method(&m, method);
    wasi_http_types_scheme_t scheme = {.tag = https ? WASI_HTTP_TYPES_SCHEME_HTTPS : WASI_HTTP_TYPES_SCHEME_HTTP};
    handler_string_t a = borrowed_str(authority, strlen(authority));
    handler_string_t p = borrowed_str(path, strlen(path));
    bool set = wasi_http_types_method_outgoing_request_set_method(r, &m) &&
               wasi_http_types_method_outgoing_request_set_scheme(r, &scheme) &&
               wasi_http_types_method_outgoing_request_set_authority(r, &a) &&
               wasi_http_types_method_outgoing_request_set_path_with_query(r, &p);
    free(authority);
    free(path);
    wasi_http_types_own_outgoing_body_t body;
    if (!headers_ok || !set || !wasi_http_types_method_outgoing_request_body(r, &body)) {
        wasi_http_types_outgoing_request_drop_own(request);
        return runnel_retry("HTTP request failed: %s: invalid method, host, path or header", url);
    }
    wasi_http_outgoing_handler_own_future_incoming_response_t pending;
    wasi_http_types_error_code_t code;
    if (!wasi_http_outgoing_handler_handle(request, NULL, &pending, &code)) {
        wasi_http_types_outgoing_body_drop_own(body);
        runnel_verdict_t v = failed(url, &code);
        wasi_http_types_error_code_free(&code);
        return v;
    }
    bool sent = send_body(body, req->body, req->body_len);
    wasi_http_types_borrow_future_incoming_response_t f = wasi_http_types_borrow_future_incoming_response(pending);
    wasi_io_poll_own_pollable_t ready = wasi_http_types_method_future_incoming_response_subscribe(f);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
    wasi_io_poll_pollable_drop_own(ready);
    wasi_http_types_result_result_own_incoming_response_error_code_void_t got;
    bool has = wasi_http_types_method_future_incoming_response_get(f, &got);
    wasi_http_types_future_incoming_response_drop_own(pending);
    if (!has || got.is_err) return runnel_retry("HTTP request failed: %s: no response", url);
    if (got.val.ok.is_err) {
        runnel_verdict_t v = failed(url, &got.val.ok.val.err);
        wasi_http_types_error_code_free(&got.val.ok.val.err);
        return v;
    }
    wasi_http_types_own_incoming_response_t response = got.val.ok.val.ok;
    if (!sent) {
        wasi_http_types_incoming_response_drop_own(response);
        return runnel_retry("HTTP request failed: %s: sending the body", url);
    }
    wasi_http_types_borrow_incoming_response_t resp = wasi_http_types_borrow_incoming_response(response);
    out->status = wasi_http_types_method_incoming_response_status(resp);
    wasi_http_types_own_headers_t headers = wasi_http_types_method_incoming_response_headers(resp);
    wasi_http_types_list_tuple2_field_name_field_value_t entries;
    wasi_http_types_method_fields_entries(wasi_http_types_borrow_fields(headers), &entries);
    out->headers = calloc(entries.len ? entries.len : 1, sizeof *out->headers);
    out->header_count = entries.len;
    for (size_t i = 0; i < entries.len; i++) {
        out->headers[i].name = strndup((const char *)entries.ptr[i].f0.ptr, entries.ptr[i].f0.len);
        out->headers[i].value = strndup((const char *)entries.ptr[i].f1.ptr, entries.ptr[i].f1.len);
    }
    wasi_http_types_list_tuple2_field_name_field_value_free(&entries);
    wasi_http_types_fields_drop_own(headers);
    wasi_http_types_own_incoming_body_t incoming;
    runnel_buf_t bytes = RUNNEL_BUF_INIT;
    runnel_verdict_t v = RUNNEL_OK;
    if (wasi_http_types_method_incoming_response_consume(resp, &incoming)) {
        wasi_io_streams_own_input_stream_t stream;
        if (wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(incoming), &stream)) {
            for (;;) {
                handler_list_u8_t chunk;
                wasi_io_streams_stream_error_t err;
                if (wasi_io_streams_method_input_stream_blocking_read(
                        wasi_io_streams_borrow_input_stream(stream), 64 * 1024, &chunk, &err)) {
                    runnel_buf_append(&bytes, chunk.ptr, chunk.len);
                    handler_list_u8_free(&chunk);
                    continue;
                }
                if (err.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED) {
                    wasi_http_types_error_code_t why;
                    if (wasi_http_types_http_error_code(wasi_io_error_borrow_error(err.val.last_operation_failed), &why)) {
                        v = failed(url, &why);
                        wasi_http_types_error_code_free(&why);
                    } else {
                        v = runnel_retry("HTTP request failed: %s: reading the response", url);
                    }
                }
                wasi_io_streams_stream_error_free(&err);
                break;
            }
            wasi_io_streams_input_stream_drop_own(stream);
        }
        wasi_http_types_future_trailers_drop_own(wasi_http_types_static_incoming_body_finish(incoming));
    }
    wasi_http_types_incoming_response_drop_own(response);
    runnel_buf_append(&bytes, "", 1);
    out->body = (uint8_t *)bytes.ptr;
    out->body_len = bytes.len - 1;
    if (!runnel_ok(v)) runnel_http_response_free(out);
    return v;
}

runnel_verdict_t runnel_http_send(const runnel_http_request_t *req, runnel_http_response_t *out) {
    memset(out, 0, sizeof *out);
    char *method = strdup(req->method ? req->method : "GET");
    for (char *c = method; *c; c++) *c = (char)toupper((unsigned char)*c);
    runnel_http_request_t hop = *req;
    bool has_key = false;
    for (size_t i = 0; i < req->header_count; i++)
        has_key |= strcasecmp(req->headers[i].name, "idempotency-key") == 0;
    char *key = NULL;
    if (!has_key && strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        key = runnel_next_idempotency_key();
    char *url = strdup(req->url);
    dropped_t drop = {false, false};
    runnel_verdict_t v = RUNNEL_OK;
    for (int n = 0;; n++) {
        v = send_once(method, url, &hop, key, drop, out);
        if (!runnel_ok(v)) break;
        const char *location = runnel_http_header(out, "location");
        uint16_t s = out->status;
        if (!location || !(s == 301 || s == 302 || s == 303 || s == 307 || s == 308)) break;
        if (n == MAX_REDIRECTS) {
            runnel_http_response_free(out);
            v = runnel_retry("HTTP request failed: %s: more than %d redirects", url, MAX_REDIRECTS);
            break;
        }
        char *next = resolve(url, location);
        drop.credentials |= !same_origin(url, next);
        free(url);
        url = next;
        /* As browsers do: a 303, or a 301/302 after a POST, becomes a GET. */
        if (s == 303 || ((s == 301 || s == 302) && strcmp(method, "POST") == 0)) {
            free(method);
            method = strdup("GET");
            hop.body = NULL;
            hop.body_len = 0;
            drop.body = true;
        }
        runnel_http_response_free(out);
    }
    free(key);
    free(url);
    free(method);
    return v;
}

const char *runnel_http_header(const runnel_http_response_t *r, const char *name) {
    for (size_t i = 0; i < r->header_count; i++)
        if (strcasecmp(r->headers[i].name, name) == 0) return r->headers[i].value;
    return NULL;
}

void runnel_http_response_free(runnel_http_response_t *r) {
    for (size_t i = 0; i < r->header_count; i++) {
        free((char *)r->headers[i].name);
        free((char *)r->headers[i].value);
    }
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}
