/*
 * The conformance plugin (plugins/CONFORMANCE.md) in C: the same verdicts,
 * emitted bytes and log lines as its Rust, Python and JavaScript twins.
 */
#include <stdlib.h>

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
    return RUNNEL_OK;
}

void runnel_handle_error(const runnel_failure_t *failure, const runnel_event_t *event) {
    runnel_log_error("handle-error: %s attempt %u last=%s event=%s",
                     runnel_failure_kind_name(failure->kind), failure->attempt,
                     failure->is_last_attempt ? "true" : "false", event ? event->id.ptr : "none");
}
