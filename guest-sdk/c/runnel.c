/*
 * runnel.c: the C guest SDK's implementation (see runnel.h), over the
 * bindings `wit-bindgen c` generates for the `handler` world.
 */
#include "runnel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handler.h"

#ifdef __wasi__
#include <wasi/api.h>

/*
 * No WASI. wasi-libc's vsnprintf and strtod refer to `stderr` (to complain
 * about long double support), which drags in fd_write, fd_seek and fd_close:
 * imports of `wasi_snapshot_preview1` that would make the component need the
 * WASI adapter and the host link WASI, for code that never runs. These weak
 * stand-ins keep wasi-libc's syscall object out of the link; a plugin that
 * really uses files or stdout pulls it in (and its strong definitions win),
 * which scripts/build-guests.sh then reports.
 */
__attribute__((weak)) __wasi_errno_t __wasi_fd_write(__wasi_fd_t fd, const __wasi_ciovec_t *iovs,
                                                     size_t iovs_len, __wasi_size_t *written) {
    (void)fd, (void)iovs, (void)iovs_len, (void)written;
    return __WASI_ERRNO_NOSYS;
}

__attribute__((weak)) __wasi_errno_t __wasi_fd_seek(__wasi_fd_t fd, __wasi_filedelta_t offset,
                                                    __wasi_whence_t whence,
                                                    __wasi_filesize_t *position) {
    (void)fd, (void)offset, (void)whence, (void)position;
    return __WASI_ERRNO_NOSYS;
}

__attribute__((weak)) __wasi_errno_t __wasi_fd_close(__wasi_fd_t fd) {
    (void)fd;
    return __WASI_ERRNO_NOSYS;
}
#endif

/* ------------------------------------------------------------- helpers */

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p)
        abort(); /* out of memory: trap */
    return p;
}

static char *vformat(const char *format, va_list args, size_t *len_out) {
    va_list copy;
    va_copy(copy, args);
    int n = vsnprintf(NULL, 0, format, copy);
    va_end(copy);
    if (n < 0)
        n = 0;
    char *s = xmalloc((size_t)n + 1);
    vsnprintf(s, (size_t)n + 1, format, args);
    if (len_out)
        *len_out = (size_t)n;
    return s;
}

/* A NUL-terminated copy of a WIT string. */
static runnel_str_t str_copy(const handler_string_t *s) {
    char *p = xmalloc(s->len + 1);
    memcpy(p, s->ptr, s->len);
    p[s->len] = 0;
    return (runnel_str_t){p, s->len};
}

static void str_free(runnel_str_t s) { free((void *)s.ptr); }

bool runnel_is(runnel_str_t s, const char *text) {
    size_t n = strlen(text);
    return s.len == n && memcmp(s.ptr, text, n) == 0;
}

const char *runnel_failure_kind_name(runnel_failure_kind_t kind) {
    switch (kind) {
    case RUNNEL_FAILURE_HANDLER_ERROR:
        return "handler-error";
    case RUNNEL_FAILURE_REJECTED:
        return "rejected";
    case RUNNEL_FAILURE_TRAP:
        return "trap";
    case RUNNEL_FAILURE_TIMEOUT:
        return "timeout";
    case RUNNEL_FAILURE_DECODE:
        return "decode";
    }
    return "unknown";
}

bool runnel_utf8_valid(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i - 1 < n) /* truncated */
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        /* overlong forms, surrogates, past U+10FFFF */
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return false;
        i += n + 1;
    }
    return true;
}

/* ------------------------------------------------------------- verdicts */

runnel_verdict_t runnel_retry(const char *format, ...) {
    va_list args;
    va_start(args, format);
    char *m = vformat(format, args, NULL);
    va_end(args);
    return (runnel_verdict_t){RUNNEL_VERDICT_RETRY, m};
}

runnel_verdict_t runnel_reject(const char *format, ...) {
    va_list args;
    va_start(args, format);
    char *m = vformat(format, args, NULL);
    va_end(args);
    return (runnel_verdict_t){RUNNEL_VERDICT_REJECT, m};
}

/* ----------------------------------------------------------- key-value */

/* The same words as the Rust, Python and JavaScript SDKs. */
static runnel_verdict_t kv_failed(const char *bucket, wasi_keyvalue_store_error_t *err) {
    runnel_verdict_t v;
    switch (err->tag) {
    case WASI_KEYVALUE_STORE_ERROR_ACCESS_DENIED:
        v = runnel_retry("key-value bucket \"%s\": not granted: add kv = [\"%s\"] under the "
                         "plugin's [plugin.grants]",
                         bucket, bucket);
        break;
    case WASI_KEYVALUE_STORE_ERROR_NO_SUCH_STORE:
        v = runnel_retry("key-value bucket \"%s\": no such store", bucket);
        break;
    default:
        v = runnel_retry("key-value bucket \"%s\": %.*s", bucket, (int)err->val.other.len,
                         (const char *)err->val.other.ptr);
        break;
    }
    wasi_keyvalue_store_error_free(err);
    return v;
}

static handler_string_t borrowed(const char *s) {
    return (handler_string_t){(uint8_t *)s, strlen(s)};
}

static wasi_keyvalue_store_borrow_bucket_t borrow(runnel_kv_bucket_t *b) {
    return wasi_keyvalue_store_borrow_bucket((wasi_keyvalue_store_own_bucket_t){b->handle});
}

runnel_verdict_t runnel_kv_open(const char *name, runnel_kv_bucket_t *out) {
    handler_string_t id = borrowed(name);
    wasi_keyvalue_store_own_bucket_t bucket;
    wasi_keyvalue_store_error_t err;
    snprintf(out->name, sizeof out->name, "%s", name);
    out->handle = -1;
    if (!wasi_keyvalue_store_open(&id, &bucket, &err))
        return kv_failed(out->name, &err);
    out->handle = bucket.__handle;
    return RUNNEL_OK;
}

void runnel_kv_close(runnel_kv_bucket_t *bucket) {
    if (bucket->handle >= 0)
        wasi_keyvalue_store_bucket_drop_own((wasi_keyvalue_store_own_bucket_t){bucket->handle});
    bucket->handle = -1;
}

runnel_verdict_t runnel_kv_get(runnel_kv_bucket_t *bucket, const char *key, bool *found,
                               uint8_t **value, size_t *len) {
    handler_string_t k = borrowed(key);
    handler_option_list_u8_t got;
    wasi_keyvalue_store_error_t err;
    if (!wasi_keyvalue_store_method_bucket_get(borrow(bucket), &k, &got, &err))
        return kv_failed(bucket->name, &err);
    *found = got.is_some;
    *value = got.is_some ? got.val.ptr : NULL;
    *len = got.is_some ? got.val.len : 0;
    return RUNNEL_OK;
}

runnel_verdict_t runnel_kv_set(runnel_kv_bucket_t *bucket, const char *key, const void *value,
                               size_t len) {
    handler_string_t k = borrowed(key);
    handler_list_u8_t v = {(uint8_t *)value, len};
    wasi_keyvalue_store_error_t err;
    if (!wasi_keyvalue_store_method_bucket_set(borrow(bucket), &k, &v, &err))
        return kv_failed(bucket->name, &err);
    return RUNNEL_OK;
}

runnel_verdict_t runnel_kv_delete(runnel_kv_bucket_t *bucket, const char *key) {
    handler_string_t k = borrowed(key);
    wasi_keyvalue_store_error_t err;
    if (!wasi_keyvalue_store_method_bucket_delete(borrow(bucket), &k, &err))
        return kv_failed(bucket->name, &err);
    return RUNNEL_OK;
}

runnel_verdict_t runnel_kv_exists(runnel_kv_bucket_t *bucket, const char *key, bool *exists) {
    handler_string_t k = borrowed(key);
    wasi_keyvalue_store_error_t err;
    if (!wasi_keyvalue_store_method_bucket_exists(borrow(bucket), &k, exists, &err))
        return kv_failed(bucket->name, &err);
    return RUNNEL_OK;
}

runnel_verdict_t runnel_kv_increment(runnel_kv_bucket_t *bucket, const char *key, int64_t delta,
                                     int64_t *sum) {
    handler_string_t k = borrowed(key);
    wasi_keyvalue_store_error_t err;
    if (!wasi_keyvalue_atomics_increment(borrow(bucket), &k, delta, sum, &err))
        return kv_failed(bucket->name, &err);
    return RUNNEL_OK;
}

/* -------------------------------------------------------------- config */

char *runnel_config_get(const char *key) {
    handler_string_t k = borrowed(key);
    handler_option_string_t got;
    wasi_config_store_error_t err;
    if (!wasi_config_store_get(&k, &got, &err)) {
        wasi_config_store_error_free(&err);
        return NULL;
    }
    if (!got.is_some)
        return NULL;
    char *out = xmalloc(got.val.len + 1);
    memcpy(out, got.val.ptr, got.val.len);
    out[got.val.len] = 0;
    handler_string_free(&got.val);
    return out;
}

/* ------------------------------------------------------------- exports */

static void event_in(const runnel_plugin_types_event_t *raw, runnel_event_t *ev) {
    ev->id = str_copy(&raw->id);
    ev->name = str_copy(&raw->name);
    ev->meta.created_at_utc = str_copy(&raw->meta.created_at_utc);
    ev->meta.correlation_id = str_copy(&raw->meta.correlation_id);
    ev->meta.attempts = raw->meta.attempts;
    ev->meta.is_dry_run = raw->meta.is_dry_run;
    ev->payload = (runnel_bytes_t){raw->payload.ptr, raw->payload.len};
}

static void event_drop(runnel_event_t *ev) {
    str_free(ev->id);
    str_free(ev->name);
    str_free(ev->meta.created_at_utc);
    str_free(ev->meta.correlation_id);
}

/* The id of the event being handled, NUL-terminated ("" when none), and
 * how many requests other than GET and HEAD this call has sent. */
static char *current_event_id;
static unsigned keyed;

const char *runnel_current_event_id(void) { return current_event_id ? current_event_id : ""; }

static void set_event_id(const uint8_t *id, size_t len) {
    free(current_event_id);
    current_event_id = id ? strndup((const char *)id, len) : NULL;
    keyed = 0;
}

char *runnel_next_idempotency_key(void) {
    if (!current_event_id || !current_event_id[0]) return NULL;
    keyed++;
    runnel_buf_t key = RUNNEL_BUF_INIT;
    if (keyed == 1) runnel_buf_printf(&key, "%s", current_event_id);
    else runnel_buf_printf(&key, "%s:%u", current_event_id, keyed);
    runnel_buf_append(&key, "", 1);
    return key.ptr;
}

bool exports_handler_handle(handler_event_t *raw, handler_refusal_t *err) {
    runnel_event_t ev;
    event_in(raw, &ev);
    set_event_id(raw->id.ptr, raw->id.len);
    runnel_verdict_t v = runnel_handle(&ev);
    set_event_id(NULL, 0);
    event_drop(&ev);
    /* Arguments of an export are the callee's to free. */
    runnel_plugin_types_event_free(raw);
    if (v.kind == RUNNEL_VERDICT_OK) {
        free(v.message);
        return true;
    }
    /* The message moves into the result, which the generated post-return
     * function frees. */
    const char *m = v.message ? v.message : "";
    err->tag = v.kind == RUNNEL_VERDICT_RETRY ? RUNNEL_PLUGIN_TYPES_REFUSAL_RETRY
                                              : RUNNEL_PLUGIN_TYPES_REFUSAL_REJECT;
    handler_string_dup(&err->val.retry, m); /* retry and reject share the layout */
    free(v.message);
    return false;
}

void exports_handler_handle_error(handler_failure_t *raw_failure,
                                  handler_event_t *maybe_event) {
    runnel_failure_t failure = {
        .message = str_copy(&raw_failure->message),
        .kind = (runnel_failure_kind_t)raw_failure->kind,
        .attempt = raw_failure->attempt,
        .is_last_attempt = raw_failure->is_last_attempt,
    };
    runnel_event_t ev;
    if (maybe_event)
        event_in(maybe_event, &ev);
    set_event_id(maybe_event ? maybe_event->id.ptr : NULL, maybe_event ? maybe_event->id.len : 0);
    runnel_handle_error(&failure, maybe_event ? &ev : NULL);
    set_event_id(NULL, 0);
    str_free(failure.message);
    runnel_plugin_types_failure_free(raw_failure);
    if (maybe_event) {
        event_drop(&ev);
        runnel_plugin_types_event_free(maybe_event);
    }
}

/* ------------------------------------------------------------ emit, log */

runnel_verdict_t runnel_emit_all(const runnel_new_event_t *events, size_t count) {
    runnel_plugin_host_list_new_event_t list;
    list.len = count;
    list.ptr = xmalloc(count * sizeof(runnel_plugin_types_new_event_t));
    for (size_t i = 0; i < count; i++) {
        /* Borrowed: the host copies what it reads during the call. */
        list.ptr[i].name = (handler_string_t){(uint8_t *)events[i].name, strlen(events[i].name)};
        list.ptr[i].payload = (handler_list_u8_t){(uint8_t *)events[i].payload, events[i].len};
    }
    handler_string_t err;
    bool ok = runnel_plugin_host_emit(&list, &err);
    free(list.ptr);
    if (ok)
        return RUNNEL_OK;
    char *m = xmalloc(err.len + 1);
    memcpy(m, err.ptr, err.len);
    m[err.len] = 0;
    handler_string_free(&err);
    return (runnel_verdict_t){RUNNEL_VERDICT_RETRY, m};
}

runnel_verdict_t runnel_emit(const char *name, const void *payload, size_t len) {
    runnel_new_event_t ev = {name, payload, len};
    return runnel_emit_all(&ev, 1);
}

runnel_verdict_t runnel_emit_str(const char *name, const char *payload) {
    return runnel_emit(name, payload, strlen(payload));
}

void runnel_log_text(runnel_level_t level, const char *text, size_t len) {
    handler_string_t s = {(uint8_t *)text, len};
    runnel_plugin_host_log((runnel_plugin_host_level_t)level, &s);
}

void runnel_vlog(runnel_level_t level, const char *format, va_list args) {
    size_t len;
    char *s = vformat(format, args, &len);
    runnel_log_text(level, s, len);
    free(s);
}

void runnel_log(runnel_level_t level, const char *format, ...) {
    va_list args;
    va_start(args, format);
    runnel_vlog(level, format, args);
    va_end(args);
}

/* ---------------------------------------------------------------- JSON */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    int depth;
} parser_t;

#define MAX_DEPTH 128 /* serde_json's recursion limit */

static void skip_ws(parser_t *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static bool parse_value(parser_t *ps, runnel_json_t *out);

static bool parse_literal(parser_t *ps, const char *lit) {
    size_t n = strlen(lit);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, lit, n) != 0)
        return false;
    ps->p += n;
    return true;
}

static int hexval(uint8_t c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool parse_string(parser_t *ps) {
    /* at the opening quote; UTF-8 was checked for the whole document */
    ps->p++;
    while (ps->p < ps->end) {
        uint8_t c = *ps->p++;
        if (c == '"')
            return true;
        if (c < 0x20)
            return false;
        if (c == '\\') {
            if (ps->p >= ps->end)
                return false;
            uint8_t e = *ps->p++;
            if (e == 'u') {
                if (ps->end - ps->p < 4)
                    return false;
                for (int k = 0; k < 4; k++)
                    if (hexval(ps->p[k]) < 0)
                        return false;
                ps->p += 4;
            } else if (!strchr("\"\\/bfnrt", e) || e == 0) {
                return false;
            }
        }
    }
    return false;
}

static bool parse_number(parser_t *ps) {
    const uint8_t *p = ps->p, *end = ps->end;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        return false;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return false;
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return false;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return false;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    ps->p = p;
    return true;
}

static bool parse_value(parser_t *ps, runnel_json_t *out) {
    skip_ws(ps);
    if (ps->p >= ps->end)
        return false;
    const uint8_t *start = ps->p;
    runnel_json_type_t type;
    switch (*ps->p) {
    case 'n':
        type = RUNNEL_JSON_NULL;
        if (!parse_literal(ps, "null"))
            return false;
        break;
    case 't':
        type = RUNNEL_JSON_BOOL;
        if (!parse_literal(ps, "true"))
            return false;
        break;
    case 'f':
        type = RUNNEL_JSON_BOOL;
        if (!parse_literal(ps, "false"))
            return false;
        break;
    case '"':
        type = RUNNEL_JSON_STRING;
        if (!parse_string(ps))
            return false;
        break;
    case '[':
    case '{': {
        bool object = *ps->p == '{';
        type = object ? RUNNEL_JSON_OBJECT : RUNNEL_JSON_ARRAY;
        if (++ps->depth > MAX_DEPTH)
            return false;
        ps->p++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) {
            ps->p++;
        } else {
            for (;;) {
                runnel_json_t item;
                if (object) {
                    skip_ws(ps);
                    if (ps->p >= ps->end || *ps->p != '"' || !parse_string(ps))
                        return false;
                    skip_ws(ps);
                    if (ps->p >= ps->end || *ps->p++ != ':')
                        return false;
                }
                if (!parse_value(ps, &item))
                    return false;
                skip_ws(ps);
                if (ps->p >= ps->end)
                    return false;
                uint8_t c = *ps->p++;
                if (c == ',')
                    continue;
                if (c == (object ? '}' : ']'))
                    break;
                return false;
            }
        }
        ps->depth--;
        break;
    }
    default:
        type = RUNNEL_JSON_NUMBER;
        if (!parse_number(ps))
            return false;
    }
    *out = (runnel_json_t){type, start, (size_t)(ps->p - start)};
    return true;
}

runnel_json_t runnel_json_parse(const uint8_t *json, size_t len) {
    runnel_json_t invalid = {RUNNEL_JSON_INVALID, json, len};
    if (!runnel_utf8_valid(json, len))
        return invalid;
    parser_t ps = {json, json + len, 0};
    runnel_json_t v;
    if (!parse_value(&ps, &v))
        return invalid;
    skip_ws(&ps);
    return ps.p == ps.end ? v : invalid;
}

static void put_utf8(runnel_buf_t *b, uint32_t cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    runnel_buf_append(b, u, n);
}

static uint32_t hex4(const uint8_t *p) {
    return (uint32_t)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

char *runnel_json_string(runnel_json_t v, size_t *len) {
    if (v.type != RUNNEL_JSON_STRING)
        return NULL;
    runnel_buf_t b = RUNNEL_BUF_INIT;
    runnel_buf_append(&b, "", 0);
    const uint8_t *p = v.ptr + 1, *end = v.ptr + v.len - 1;
    while (p < end) {
        if (*p != '\\') {
            const uint8_t *q = p;
            while (q < end && *q != '\\')
                q++;
            runnel_buf_append(&b, p, (size_t)(q - p));
            p = q;
            continue;
        }
        uint8_t e = p[1];
        p += 2;
        switch (e) {
        case 'b': runnel_buf_append(&b, "\b", 1); break;
        case 'f': runnel_buf_append(&b, "\f", 1); break;
        case 'n': runnel_buf_append(&b, "\n", 1); break;
        case 'r': runnel_buf_append(&b, "\r", 1); break;
        case 't': runnel_buf_append(&b, "\t", 1); break;
        case 'u': {
            uint32_t cp = hex4(p);
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                uint32_t lo = hex4(p + 2);
                if (lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    p += 6;
                }
            }
            if (cp >= 0xd800 && cp < 0xe000)
                cp = 0xfffd; /* a lone surrogate */
            put_utf8(&b, cp);
            break;
        }
        default: runnel_buf_append(&b, &e, 1); /* " \ / */
        }
    }
    if (len)
        *len = b.len;
    runnel_buf_append(&b, "", 1);
    return b.ptr;
}

bool runnel_json_string_is(runnel_json_t v, const char *text) {
    size_t len;
    char *s = runnel_json_string(v, &len);
    if (!s)
        return false;
    bool same = len == strlen(text) && memcmp(s, text, len) == 0;
    free(s);
    return same;
}

bool runnel_json_get(runnel_json_t obj, const char *key, runnel_json_t *out) {
    if (obj.type != RUNNEL_JSON_OBJECT)
        return false;
    parser_t ps = {obj.ptr + 1, obj.ptr + obj.len, 0};
    bool found = false;
    skip_ws(&ps);
    if (*ps.p == '}')
        return false;
    for (;;) {
        skip_ws(&ps);
        const uint8_t *kstart = ps.p;
        parse_string(&ps);
        runnel_json_t k = {RUNNEL_JSON_STRING, kstart, (size_t)(ps.p - kstart)};
        skip_ws(&ps);
        ps.p++; /* ':' */
        runnel_json_t v;
        parse_value(&ps, &v);
        if (runnel_json_string_is(k, key)) {
            *out = v;
            found = true; /* keep going: the last one wins */
        }
        skip_ws(&ps);
        if (*ps.p++ == '}')
            return found;
    }
}

bool runnel_json_number(runnel_json_t v, double *out) {
    if (v.type != RUNNEL_JSON_NUMBER)
        return false;
    char tmp[64];
    char *s = v.len < sizeof tmp ? tmp : xmalloc(v.len + 1);
    memcpy(s, v.ptr, v.len);
    s[v.len] = 0;
    *out = strtod(s, NULL);
    if (s != tmp)
        free(s);
    return true;
}

bool runnel_json_uint(runnel_json_t v, uint64_t max, uint64_t *out) {
    if (v.type != RUNNEL_JSON_NUMBER)
        return false;
    const uint8_t *p = v.ptr, *end = v.ptr + v.len;
    bool negative = *p == '-';
    if (negative)
        p++;
    uint64_t n = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return false; /* a fraction or an exponent: a float */
        uint64_t d = (uint64_t)(*p - '0');
        if (n > (UINT64_MAX - d) / 10)
            return false;
        n = n * 10 + d;
    }
    if ((negative && n != 0) || n > max)
        return false;
    *out = n;
    return true;
}

void runnel_buf_append(runnel_buf_t *b, const void *bytes, size_t len) {
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *p = realloc(b->ptr, cap);
        if (!p)
            abort();
        b->ptr = p;
        b->cap = cap;
    }
    memcpy(b->ptr + b->len, bytes, len);
    b->len += len;
    b->ptr[b->len] = 0; /* always a C string too */
}

void runnel_buf_printf(runnel_buf_t *b, const char *format, ...) {
    va_list args;
    va_start(args, format);
    size_t len;
    char *s = vformat(format, args, &len);
    va_end(args);
    runnel_buf_append(b, s, len);
    free(s);
}

void runnel_buf_json_string(runnel_buf_t *b, const char *text, size_t len) {
    static const char hex[] = "0123456789abcdef";
    runnel_buf_append(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        const char *esc = NULL;
        char u[6];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                memcpy(u, "\\u00", 4);
                u[4] = hex[c >> 4];
                u[5] = hex[c & 15];
            }
        }
        if (!esc && c >= 0x20)
            continue;
        runnel_buf_append(b, text + run, i - run);
        if (esc)
            runnel_buf_append(b, esc, strlen(esc));
        else
            runnel_buf_append(b, u, 6);
        run = i + 1;
    }
    runnel_buf_append(b, text + run, len - run);
    runnel_buf_append(b, "\"", 1);
}

void runnel_buf_free(runnel_buf_t *b) {
    free(b->ptr);
    *b = RUNNEL_BUF_INIT;
}
