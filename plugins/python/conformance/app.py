"""The conformance plugin (``plugins/CONFORMANCE.md``) in Python: the same
verdicts, emitted bytes and log lines as its Rust, JavaScript and C twins."""

from typing import Optional

import runnel
from runnel import Event, Failure, Reject, Retry, emit, emit_all, log, parse_json, to_json

FAIL_N_USAGE = 'fail-n needs a payload {"n": <integer 0..4294967295>}'
U32_MAX = 2**32 - 1


def fail_n(event: Event) -> Optional[int]:
    """``n`` of a ``fail-n`` payload: a JSON number with an integer value in
    u32's range (``2``, ``2.0`` and ``2e0`` alike)."""
    try:
        value = parse_json(event.payload)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    n = value.get("n")
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return None
    if isinstance(n, float) and not n.is_integer():
        return None
    return int(n) if 0 <= n <= U32_MAX else None


class Conformance(runnel.Plugin):
    def handle(self, event: Event) -> None:
        name = event.name
        if name == "echo":
            emit("echoed", event.payload)
        elif name == "inherit":
            emit("child", event.id)
        elif name == "batch":
            emit_all([("first", b"1"), ("second", b"2")])
        elif name == "fail-n":
            n = fail_n(event)
            if n is None:
                raise Reject(FAIL_N_USAGE)
            attempts = event.meta.attempts
            if attempts <= n:
                raise Retry(f"attempt {attempts} of {n} fails")
            emit("recovered", f'{{"attempts":{attempts}}}')
        elif name == "reject":
            raise Reject("rejected by conformance")
        elif name == "retry":
            raise Retry("retry requested")
        elif name == "log":
            text = event.text()
            if text is None:
                raise Reject("log needs a UTF-8 payload")
            log.info(text)
            log.warn("conformance warn line")
        elif name == "meta":
            meta = event.meta
            emit(
                "meta-echoed",
                to_json(
                    {
                        "id": event.id,
                        "name": event.name,
                        "correlation_id": meta.correlation_id,
                        "attempts": meta.attempts,
                        "is_dry_run": meta.is_dry_run,
                        "created_at_utc": meta.created_at_utc,
                    }
                ),
            )
        elif name == "no-route":
            emit("unrouted", b"")
        elif name == "trap":
            raise RuntimeError("trap requested")
        elif name == "kv-count":
            bucket = runnel.kv.open("conformance")
            n = bucket.increment("count", 1)
            if bucket.get("count") != str(n).encode():
                raise Reject("read its own write wrong")
            emit("counted", str(n))
        elif name == "kv-lost":
            runnel.kv.open("conformance").set("lost", b"x")
            raise Reject("kv write then reject")
        elif name == "kv-check":
            bucket = runnel.kv.open("conformance")
            lost = "true" if bucket.exists("lost") else "false"
            count = bucket.get("count")
            count_text = "none" if count is None else count.decode("utf-8", "replace")
            emit("kv-checked", f"lost={lost} count={count_text}")
        elif name == "kv-denied":
            runnel.kv.open("other")
        elif name == "config":
            def or_none(v: Optional[str]) -> str:
                return "none" if v is None else v

            log.info(f"token={or_none(runnel.config.get('token'))}")
            greeting = or_none(runnel.config.get("greeting"))
            missing = or_none(runnel.config.get("missing"))
            emit("configured", f"greeting={greeting} missing={missing}")
        elif name == "config-reject":
            raise Reject(f"bad token {runnel.config.get('token') or ''}")
        elif name == "http-get":
            base = runnel.config.require("http_base")
            try:
                r = runnel.http.get(f"{base}/hello")
            except runnel.HttpError:
                raise Retry("http failed") from None
            header = r.header("x-conformance") or "none"
            emit("http-got", f"status={r.status} x-conformance={header} body={r.text()}")
        elif name == "http-post":
            base = runnel.config.require("http_base")
            try:
                r = runnel.http.post(f"{base}/echo", body=event.payload)
            except runnel.HttpError:
                raise Retry("http failed") from None
            emit("http-posted", f"status={r.status} {r.text()}")
        elif name in ("http-denied", "http-redirect"):
            if name == "http-denied":
                url = runnel.config.require("http_denied") + "/hello"
            else:
                url = runnel.config.require("http_base") + "/away"
            try:
                runnel.http.get(url)
            except runnel.HttpError:
                raise Reject("http denied") from None
            raise Retry("expected a denial")

    def handle_error(self, failure: Failure, event: Optional[Event]) -> None:
        last = "true" if failure.is_last_attempt else "false"
        log.error(
            f"handle-error: {failure.kind} attempt {failure.attempt} last={last} "
            f"event={event.id if event is not None else 'none'}"
        )


WitWorld = runnel.export(Conformance)
