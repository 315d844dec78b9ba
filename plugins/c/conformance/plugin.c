/*
 * The conformance plugin (plugins/CONFORMANCE.md) in C: the same verdicts,
 * emitted bytes and log lines as its Rust, Python and JavaScript twins.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runnel.h"

#define FAIL_N_USAGE "fail-n needs a payload {\"n\": <integer 0..4294967295>}"

/* `n` of a `fail-n` payload: a JSON number with an integer value in u32's
 * range (`2`, `2.0` and `2e0` alike). */
static bool fail_n(const runnel_event_t *event, uint32_t *n) {
    runnel_json_t doc = runnel_json_parse(event->payload.ptr, event->payload.len);
    runnel_json_t v;
    double d;
    if (!runnel_json_get(doc, "n", &v) || !runnel_json_number(v, &d))
        return false;
    if (!(d >= 0.0 && d <= 4294967295.0) || d != (double)(uint64_t)d)
        return false;
    *n = (uint32_t)d;
    return true;
}

static void json_field(runnel_buf_t *b, const char *key, runnel_str_t value) {
    runnel_buf_printf(b, "\"%s\":", key);
    runnel_buf_json_string(b, value.ptr, value.len);
}

/* kv-count, kv-lost and kv-check (CONFORMANCE.md) on the bucket
 * "conformance". */
static runnel_verdict_t kv_case(runnel_str_t name) {
    runnel_kv_bucket_t bucket;
    RUNNEL_TRY(runnel_kv_open("conformance", &bucket));
    runnel_verdict_t v = RUNNEL_OK;
    bool found;
    uint8_t *value = NULL;
    size_t len = 0;
    char text[32];
    if (runnel_is(name, "kv-count")) {
        int64_t n;
        v = runnel_kv_increment(&bucket, "count", 1, &n);
        if (runnel_ok(v))
            v = runnel_kv_get(&bucket, "count", &found, &value, &len);
        if (runnel_ok(v)) {
            int written = snprintf(text, sizeof text, "%lld", (long long)n);
            if (!found || len != (size_t)written || memcmp(value, text, len) != 0)
                v = runnel_reject("read its own write wrong");
            else
                v = runnel_emit_str("counted", text);
        }
    } else if (runnel_is(name, "kv-lost")) {
        v = runnel_kv_set(&bucket, "lost", "x", 1);
        if (runnel_ok(v))
            v = runnel_reject("kv write then reject");
    } else {
        bool lost;
        v = runnel_kv_exists(&bucket, "lost", &lost);
        if (runnel_ok(v))
            v = runnel_kv_get(&bucket, "count", &found, &value, &len);
        if (runnel_ok(v)) {
            runnel_buf_t b = RUNNEL_BUF_INIT;
            runnel_buf_printf(&b, "lost=%s count=", lost ? "true" : "false");
            if (found)
                runnel_buf_printf(&b, "%.*s", (int)len, (const char *)value);
            else
                runnel_buf_printf(&b, "none");
            v = runnel_emit("kv-checked", b.ptr, b.len);
            runnel_buf_free(&b);
        }
    }
    free(value);
    runnel_kv_close(&bucket);
    return v;
}

/* The HTTP cases, against the test's server (config http_base). */
static runnel_verdict_t http_case(const runnel_event_t *event) {
    runnel_str_t name = event->name;
    char *base = runnel_config_get("http_base");
    char *denied = runnel_config_get("http_denied");
    if (!base || !denied) {
        free(base);
        free(denied);
        return runnel_retry("config key \"http_base\" or \"http_denied\" is not set");
    }
    runnel_buf_t url = RUNNEL_BUF_INIT;
    runnel_http_request_t req = {0};
    bool expect_denial = false;
    if (runnel_is(name, "http-get")) {
        runnel_buf_printf(&url, "%s/hello", base);
    } else if (runnel_is(name, "http-post")) {
        runnel_buf_printf(&url, "%s/echo", base);
        req.method = "POST";
        req.body = event->payload.ptr;
        req.body_len = event->payload.len;
    } else {
        runnel_buf_printf(&url, runnel_is(name, "http-denied") ? "%s/hello" : "%s/away",
                          runnel_is(name, "http-denied") ? denied : base);
        expect_denial = true;
    }
    runnel_buf_append(&url, "", 1);
    req.url = url.ptr;
    runnel_http_response_t r;
    runnel_verdict_t v = runnel_http_send(&req, &r);
    runnel_buf_free(&url);
    free(base);
    free(denied);
    if (expect_denial) {
        bool refused = !runnel_ok(v);
        free(v.message);
        if (!refused) {
            runnel_http_response_free(&r);
            return runnel_retry("expected a denial");
        }
        return runnel_reject("http denied");
    }
    if (!runnel_ok(v)) {
        free(v.message);
        return runnel_retry("http failed");
    }
    runnel_buf_t out = RUNNEL_BUF_INIT;
    if (runnel_is(name, "http-get")) {
        const char *h = runnel_http_header(&r, "x-conformance");
        runnel_buf_printf(&out, "status=%u x-conformance=%s body=", r.status, h ? h : "none");
    } else {
        runnel_buf_printf(&out, "status=%u ", r.status);
    }
    runnel_buf_append(&out, r.body, r.body_len);
    v = runnel_emit(runnel_is(name, "http-get") ? "http-got" : "http-posted", out.ptr, out.len);
    runnel_buf_free(&out);
    runnel_http_response_free(&r);
    return v;
}

runnel_verdict_t runnel_handle(const runnel_event_t *event) {
    runnel_str_t name = event->name;
    if (runnel_is(name, "echo"))
        return runnel_emit("echoed", event->payload.ptr, event->payload.len);
    if (runnel_is(name, "inherit"))
        return runnel_emit("child", event->id.ptr, event->id.len);
    if (runnel_is(name, "batch")) {
        runnel_new_event_t batch[] = {{"first", "1", 1}, {"second", "2", 1}};
        return runnel_emit_all(batch, 2);
    }
    if (runnel_is(name, "fail-n")) {
        uint32_t n;
        if (!fail_n(event, &n))
            return runnel_reject("%s", FAIL_N_USAGE);
        uint32_t attempts = event->meta.attempts;
        if (attempts <= n)
            return runnel_retry("attempt %u of %u fails", attempts, n);
        runnel_buf_t out = RUNNEL_BUF_INIT;
        runnel_buf_printf(&out, "{\"attempts\":%u}", attempts);
        runnel_verdict_t v = runnel_emit("recovered", out.ptr, out.len);
        runnel_buf_free(&out);
        return v;
    }
    if (runnel_is(name, "reject"))
        return runnel_reject("rejected by conformance");
    if (runnel_is(name, "retry"))
        return runnel_retry("retry requested");
    if (runnel_is(name, "log")) {
        if (!runnel_utf8_valid(event->payload.ptr, event->payload.len))
            return runnel_reject("log needs a UTF-8 payload");
        runnel_log_text(RUNNEL_INFO, (const char *)event->payload.ptr, event->payload.len);
        runnel_log_warn("conformance warn line");
        return RUNNEL_OK;
    }
    if (runnel_is(name, "meta")) {
        runnel_buf_t out = RUNNEL_BUF_INIT;
        runnel_buf_append(&out, "{", 1);
        json_field(&out, "id", event->id);
        runnel_buf_append(&out, ",", 1);
        json_field(&out, "name", event->name);
        runnel_buf_append(&out, ",", 1);
        json_field(&out, "correlation_id", event->meta.correlation_id);
        runnel_buf_printf(&out, ",\"attempts\":%u,\"is_dry_run\":%s,", event->meta.attempts,
                          event->meta.is_dry_run ? "true" : "false");
        json_field(&out, "created_at_utc", event->meta.created_at_utc);
        runnel_buf_append(&out, "}", 1);
        runnel_verdict_t v = runnel_emit("meta-echoed", out.ptr, out.len);
        runnel_buf_free(&out);
        return v;
    }
    if (runnel_is(name, "no-route"))
        return runnel_emit("unrouted", "", 0);
    if (runnel_is(name, "trap"))
        abort();
    if (runnel_is(name, "kv-count") || runnel_is(name, "kv-lost") || runnel_is(name, "kv-check"))
        return kv_case(name);
    if (runnel_is(name, "config")) {
        char *token = runnel_config_get("token");
        char *greeting = runnel_config_get("greeting");
        char *missing = runnel_config_get("missing");
        runnel_log_info("token=%s", token ? token : "none");
        runnel_buf_t b = RUNNEL_BUF_INIT;
        runnel_buf_printf(&b, "greeting=%s missing=%s", greeting ? greeting : "none",
                          missing ? missing : "none");
        runnel_verdict_t v = runnel_emit("configured", b.ptr, b.len);
        runnel_buf_free(&b);
        free(token);
        free(greeting);
        free(missing);
        return v;
    }
    if (runnel_is(name, "config-reject")) {
        char *token = runnel_config_get("token");
        runnel_verdict_t v = runnel_reject("bad token %s", token ? token : "");
        free(token);
        return v;
    }
    if (runnel_is(name, "http-get") || runnel_is(name, "http-post") ||
        runnel_is(name, "http-denied") || runnel_is(name, "http-redirect"))
        return http_case(event);
    if (runnel_is(name, "kv-denied")) {
        runnel_kv_bucket_t other;
        RUNNEL_TRY(runnel_kv_open("other", &other));
        runnel_kv_close(&other);
    }
    return RUNNEL_OK;
}

void runnel_handle_error(const runnel_failure_t *failure, const runnel_event_t *event) {
    runnel_log_error("handle-error: %s attempt %u last=%s event=%s",
                     runnel_failure_kind_name(failure->kind), failure->attempt,
                     failure->is_last_attempt ? "true" : "false", event ? event->id.ptr : "none");
}
