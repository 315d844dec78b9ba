/*
 * runnel.h: write Runnel event handlers in C.
 *
 * A plugin defines two functions and links with runnel.c and the bindings
 * `wit-bindgen c` generates from wit/ (handler.c, handler.h and
 * handler_component_type.o):
 *
 *     #include "runnel.h"
 *
 *     runnel_verdict_t runnel_handle(const runnel_event_t *event) {
 *         if (runnel_is(event->name, "order.created"))
 *             return runnel_emit("order.enriched", event->payload.ptr, event->payload.len);
 *         if (event->meta.attempts < 3)
 *             return runnel_retry("not yet (attempt %u)", event->meta.attempts);
 *         return RUNNEL_OK;
 *     }
 *
 *     void runnel_handle_error(const runnel_failure_t *failure, const runnel_event_t *event) {
 *         runnel_log_error("attempt %u failed: %s", failure->attempt, failure->message.ptr);
 *     }
 *
 * (or `RUNNEL_DEFAULT_HANDLE_ERROR` for a handle_error that does nothing).
 *
 * Build (scripts/build-guests.sh does it for every plugin in plugins/c):
 *
 *     wit-bindgen c wit --world handler --out-dir gen
 *     clang --target=wasm32-wasi -mexec-model=reactor -O2 -Igen -Iguest-sdk/c \
 *         plugin.c guest-sdk/c/runnel.c gen/handler.c gen/handler_component_type.o \
 *         -o plugin.core.wasm
 *     wasm-tools component new plugin.core.wasm -o plugin.wasm
 *
 * As long as the plugin does not use stdio, files or clocks, the core module
 * imports nothing from WASI and the component needs no adapter: it imports
 * the contract and nothing else.
 *
 * Memory: everything this header hands to `runnel_handle` is valid for the
 * duration of the call and freed after it. Strings are UTF-8, with their
 * length, and NUL-terminated for convenience (a WIT string may contain U+0000:
 * use `len` where that matters).
 */
#ifndef RUNNEL_H
#define RUNNEL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- events */

/* UTF-8 text with its length; `ptr[len]` is always 0. */
typedef struct {
    const char *ptr;
    size_t len;
} runnel_str_t;

/* Opaque bytes. */
typedef struct {
    const uint8_t *ptr;
    size_t len;
} runnel_bytes_t;

typedef struct {
    /* RFC 3339 in UTC, e.g. "2023-02-12T18:00:59.123456789Z". */
    runnel_str_t created_at_utc;
    /* Ties together every event caused by one request; "" when none. */
    runnel_str_t correlation_id;
    /* How many times this event has been handed to a handler, counting this
     * call: the first call sees 1. */
    uint32_t attempts;
    /* A dry run must have no side effects outside the event system. */
    bool is_dry_run;
} runnel_meta_t;

typedef struct {
    runnel_str_t id;
    runnel_str_t name;
    runnel_meta_t meta;
    runnel_bytes_t payload;
} runnel_event_t;

typedef enum {
    RUNNEL_FAILURE_HANDLER_ERROR = 0, /* handle returned retry */
    RUNNEL_FAILURE_REJECTED = 1,      /* handle returned reject */
    RUNNEL_FAILURE_TRAP = 2,          /* the plugin trapped */
    RUNNEL_FAILURE_TIMEOUT = 3,       /* the call ran past its time limit */
    RUNNEL_FAILURE_DECODE = 4,        /* the entry could not be decoded */
} runnel_failure_kind_t;

typedef struct {
    runnel_str_t message;
    runnel_failure_kind_t kind;
    /* The attempt that failed (1 for the first). */
    uint32_t attempt;
    /* True when the event is about to be dead-lettered. */
    bool is_last_attempt;
} runnel_failure_t;

/* "handler-error", "rejected", "trap", "timeout" or "decode": the WIT names. */
const char *runnel_failure_kind_name(runnel_failure_kind_t kind);

/* True when `s` is exactly the NUL-terminated `text`. */
bool runnel_is(runnel_str_t s, const char *text);

/* True when `len` bytes are valid UTF-8 (a payload is not NUL-terminated:
 * print it with "%.*s", (int)payload.len, (const char *)payload.ptr). */
bool runnel_utf8_valid(const uint8_t *bytes, size_t len);

/* ------------------------------------------------------------- verdicts */

typedef enum {
    RUNNEL_VERDICT_OK = 0,
    /* Transient: the host retries after backoff while attempts remain. */
    RUNNEL_VERDICT_RETRY = 1,
    /* Permanent: the host dead-letters the event now. */
    RUNNEL_VERDICT_REJECT = 2,
} runnel_verdict_kind_t;

typedef struct {
    runnel_verdict_kind_t kind;
    char *message; /* malloc'd, owned by the verdict; NULL for ok */
} runnel_verdict_t;

#define RUNNEL_OK ((runnel_verdict_t){RUNNEL_VERDICT_OK, NULL})

/* Refusals with a printf-style reason. */
runnel_verdict_t runnel_retry(const char *format, ...) __attribute__((format(printf, 1, 2)));
runnel_verdict_t runnel_reject(const char *format, ...) __attribute__((format(printf, 1, 2)));

static inline bool runnel_ok(runnel_verdict_t v) { return v.kind == RUNNEL_VERDICT_OK; }

/* Returns from the calling function with `expr`'s verdict unless it is ok,
 * like Rust's `?`: RUNNEL_TRY(runnel_emit(...)); */
#define RUNNEL_TRY(expr)                                   \
    do {                                                   \
        runnel_verdict_t runnel_try_verdict_ = (expr);     \
        if (!runnel_ok(runnel_try_verdict_))               \
            return runnel_try_verdict_;                    \
    } while (0)

/* ---------------------------------------------------- what you implement */

/* Handles one event: return RUNNEL_OK, runnel_retry(...) or runnel_reject(...).
 * A trap (abort(), __builtin_trap(), a bad memory access) is a failure of kind
 * "trap". */
runnel_verdict_t runnel_handle(const runnel_event_t *event);

/* Told about each failed attempt; `event` is NULL except on the last one,
 * when the host gives up on the event. */
void runnel_handle_error(const runnel_failure_t *failure, const runnel_event_t *event);

/* A handle_error that does nothing, for plugins that need none. */
#define RUNNEL_DEFAULT_HANDLE_ERROR                                                        \
    void runnel_handle_error(const runnel_failure_t *failure, const runnel_event_t *event) { \
        (void)failure;                                                                      \
        (void)event;                                                                        \
    }

/* ------------------------------------------------------------ emit, log */

typedef struct {
    const char *name;
    const void *payload;
    size_t len;
} runnel_new_event_t;

/* Queues one event for publication (only if this call to runnel_handle
 * succeeds). The host fills in id and meta, inheriting the correlation id and
 * dry-run flag of the event being handled. Returns RUNNEL_OK, or a retry with
 * the host's reason (no route for the name, too many events). */
runnel_verdict_t runnel_emit(const char *name, const void *payload, size_t len);

/* An event whose payload is a NUL-terminated string (e.g. JSON). */
runnel_verdict_t runnel_emit_str(const char *name, const char *payload);

/* Several events at once: all of them, or none if one cannot be published. */
runnel_verdict_t runnel_emit_all(const runnel_new_event_t *events, size_t count);

typedef enum {
    RUNNEL_TRACE = 0,
    RUNNEL_DEBUG = 1,
    RUNNEL_INFO = 2,
    RUNNEL_WARN = 3,
    RUNNEL_ERROR = 4,
} runnel_level_t;

/* A line in the host's log, tagged with the plugin and the event;
 * printf-style. */
void runnel_log(runnel_level_t level, const char *format, ...) __attribute__((format(printf, 2, 3)));
void runnel_vlog(runnel_level_t level, const char *format, va_list args);
/* A line of exactly `len` bytes of UTF-8, no formatting. */
void runnel_log_text(runnel_level_t level, const char *text, size_t len);

#define runnel_log_trace(...) runnel_log(RUNNEL_TRACE, __VA_ARGS__)
#define runnel_log_debug(...) runnel_log(RUNNEL_DEBUG, __VA_ARGS__)
#define runnel_log_info(...) runnel_log(RUNNEL_INFO, __VA_ARGS__)
#define runnel_log_warn(...) runnel_log(RUNNEL_WARN, __VA_ARGS__)
#define runnel_log_error(...) runnel_log(RUNNEL_ERROR, __VA_ARGS__)

/* ----------------------------------------------------------- key-value */

/* Key-value state (wasi:keyvalue), committed exactly once with the event: a
 * call's writes take effect only if runnel_handle returns RUNNEL_OK, with
 * its emitted events and the acknowledgement of the event; reads see the
 * call's own writes. Only buckets the plugin's config grants can be opened
 * (kv = ["counts"]). Every function returns RUNNEL_OK, or a retry naming the
 * bucket and the host's reason, so RUNNEL_TRY() passes a failure on.
 * A plugin that calls none of them does not import wasi:keyvalue. */

typedef struct {
    int32_t handle;
    char name[72];
} runnel_kv_bucket_t;

/* Opens a granted bucket; close it with runnel_kv_close. */
runnel_verdict_t runnel_kv_open(const char *name, runnel_kv_bucket_t *out);
void runnel_kv_close(runnel_kv_bucket_t *bucket);

/* The value of `key`: *found false when it is not set, else *value (to
 * free()) of *len bytes. */
runnel_verdict_t runnel_kv_get(runnel_kv_bucket_t *bucket, const char *key, bool *found,
                               uint8_t **value, size_t *len);
runnel_verdict_t runnel_kv_set(runnel_kv_bucket_t *bucket, const char *key, const void *value,
                               size_t len);
runnel_verdict_t runnel_kv_delete(runnel_kv_bucket_t *bucket, const char *key);
runnel_verdict_t runnel_kv_exists(runnel_kv_bucket_t *bucket, const char *key, bool *exists);
/* Adds `delta` to the integer at `key` (0 when not set), stored as decimal
 * text; *sum gets the result. */
runnel_verdict_t runnel_kv_increment(runnel_kv_bucket_t *bucket, const char *key, int64_t delta,
                                     int64_t *sum);

/* -------------------------------------------------------------- config */

/* The value of `key` in the plugin's [plugin.config] (plain values and
 * secrets the host read when it loaded the plugin), malloc'd and
 * NUL-terminated, to free(); NULL when the config does not set it. A plugin
 * that never calls it does not import wasi:config. */
char *runnel_config_get(const char *key);

/* ---------------------------------------------------------------- HTTP */

/* Outbound HTTP (wasi:http) to the hosts the plugin's config grants
 * (http = ["https://api.example.com"] under [plugin.grants]). Requests are
 * effects outside the event system: a redelivered or retried event sends
 * them again, so every request other than GET and HEAD carries an
 * Idempotency-Key header unless the request sets its own (see
 * runnel_next_idempotency_key).
 * In a dry run the host refuses all but GET and HEAD. Redirects are followed
 * (up to 5), each hop granted or refused on its own; every wait ends at the
 * call's time limit. A plugin that calls none of these does not import
 * wasi:http. */

typedef struct {
    const char *name;
    const char *value;
} runnel_http_header_t;

typedef struct {
    const char *method; /* "GET" when NULL */
    const char *url;    /* absolute: http(s)://host[:port]/path?query */
    const runnel_http_header_t *headers;
    size_t header_count;
    const void *body;
    size_t body_len;
} runnel_http_request_t;

typedef struct {
    uint16_t status;
    runnel_http_header_t *headers; /* malloc'd names (lowercase) and values */
    size_t header_count;
    uint8_t *body; /* malloc'd, NUL-terminated for convenience */
    size_t body_len;
} runnel_http_response_t;

/* Sends a request and reads the whole response into *out (free it with
 * runnel_http_response_free). A request the host refused (not granted, not
 * GET/HEAD in a dry run, too many in one call) is a rejection: no retry
 * would change it; any other failure (a timeout, connection refused, a body
 * too big) is a retry. Both name the URL. */
runnel_verdict_t runnel_http_send(const runnel_http_request_t *req, runnel_http_response_t *out);
/* The first value of a header, by case-insensitive name; NULL if absent. */
const char *runnel_http_header(const runnel_http_response_t *r, const char *name);
void runnel_http_response_free(runnel_http_response_t *r);
/* The id of the event being handled ("" when none: outside a call, and in
 * runnel_handle_error before the last attempt). */
const char *runnel_current_event_id(void);
/* The idempotency key runnel_http_send gives the call's next request other
 * than GET and HEAD: the event id for the first, then "<id>:2", "<id>:3"...
 * (the same on every attempt that sends the same requests in the same
 * order); malloc'd, NULL when no event is being handled. */
char *runnel_next_idempotency_key(void);

/* ---------------------------------------------------------------- JSON */

/* A small, strict JSON reader (RFC 8259 over UTF-8, as Rust's serde_json
 * reads it) for payloads, and a writer for the payloads you emit. */

typedef enum {
    RUNNEL_JSON_INVALID = 0,
    RUNNEL_JSON_NULL,
    RUNNEL_JSON_BOOL,
    RUNNEL_JSON_NUMBER,
    RUNNEL_JSON_STRING,
    RUNNEL_JSON_ARRAY,
    RUNNEL_JSON_OBJECT,
} runnel_json_type_t;

/* A JSON value: its type and its text in the document. */
typedef struct {
    runnel_json_type_t type;
    const uint8_t *ptr;
    size_t len;
} runnel_json_t;

/* Parses a whole document (e.g. a payload). `type` is RUNNEL_JSON_INVALID
 * when it is not exactly one valid JSON value. */
runnel_json_t runnel_json_parse(const uint8_t *json, size_t len);

/* The member `key` of an object (the last one if the key is repeated, as
 * serde_json, Python and JavaScript read it); false when absent or when `obj`
 * is not an object. */
bool runnel_json_get(runnel_json_t obj, const char *key, runnel_json_t *out);

/* A string's value, unescaped: malloc'd, NUL-terminated, to free(). NULL when
 * `v` is not a string. */
char *runnel_json_string(runnel_json_t v, size_t *len);

/* True when `v` is the string `text`. */
bool runnel_json_string_is(runnel_json_t v, const char *text);

/* The value of a number (any number, as a double). */
bool runnel_json_number(runnel_json_t v, double *out);

/* An integer written without fraction or exponent, in 0..=max (as serde reads
 * into u8..u64). */
bool runnel_json_uint(runnel_json_t v, uint64_t max, uint64_t *out);

/* A growable byte buffer for writing payloads. */
typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
} runnel_buf_t;

#define RUNNEL_BUF_INIT ((runnel_buf_t){NULL, 0, 0})

void runnel_buf_append(runnel_buf_t *buf, const void *bytes, size_t len);
void runnel_buf_printf(runnel_buf_t *buf, const char *format, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string literal, escaped as serde_json escapes (`\"`, `\\`, `\b`, `\f`,
 * `\n`, `\r`, `\t`, other controls as `\u00xx`; everything else verbatim). */
void runnel_buf_json_string(runnel_buf_t *buf, const char *text, size_t len);
void runnel_buf_free(runnel_buf_t *buf);

#ifdef __cplusplus
}
#endif

#endif /* RUNNEL_H */
