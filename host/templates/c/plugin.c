/* {{name}}: a Runnel plugin. `greet` events are answered with `greeted`. */
#include <stdlib.h>

#include "runnel.h"

runnel_verdict_t runnel_handle(const runnel_event_t *event) {
    if (!runnel_is(event->name, "greet"))
        return RUNNEL_OK; /* not ours: acknowledged without doing anything */
    runnel_json_t body = runnel_json_parse(event->payload.ptr, event->payload.len);
    runnel_json_t name;
    if (body.type != RUNNEL_JSON_OBJECT || !runnel_json_get(body, "name", &name) ||
        name.type != RUNNEL_JSON_STRING)
        return runnel_reject("a greet event needs a \"name\"");
    size_t len;
    char *who = runnel_json_string(name, &len);
    runnel_log_info("greeting %s", who);
    runnel_buf_t out = RUNNEL_BUF_INIT;
    runnel_buf_append(&out, "{\"hello\":", 9);
    runnel_buf_json_string(&out, who, len);
    runnel_buf_append(&out, "}", 1);
    runnel_verdict_t verdict = runnel_emit("greeted", out.ptr, out.len);
    runnel_buf_free(&out);
    free(who);
    return verdict;
}

void runnel_handle_error(const runnel_failure_t *failure, const runnel_event_t *event) {
    if (event)
        runnel_log_error("gave up on %.*s: %s", (int)event->id.len, event->id.ptr,
                         failure->message.ptr);
}
