// The conformance plugin (plugins/CONFORMANCE.md) in JavaScript: the same
// verdicts, emitted bytes and log lines as its Rust, Python and C twins.
import { handler, errorHandler, emit, emitAll, log, Reject, Retry } from "../../../guest-sdk/js/runnel.js";
import { kv } from "../../../guest-sdk/js/kv.js";
import { config } from "../../../guest-sdk/js/config.js";
import { fetch } from "../../../guest-sdk/js/http.js";

const FAIL_N_USAGE = 'fail-n needs a payload {"n": <integer 0..4294967295>}';

// `n` of a `fail-n` payload: a JSON number with an integer value in u32's
// range (`2`, `2.0` and `2e0` alike).
function failN(event) {
  const text = event.text();
  if (text === undefined) return undefined;
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) return undefined;
  const n = Object.hasOwn(value, "n") ? value.n : undefined;
  if (!Number.isInteger(n) || n < 0 || n > 4294967295) return undefined;
  return n === 0 ? 0 : n; // -0 reads as 0
}

export const handle = handler((event) => {
  switch (event.name) {
    case "echo":
      emit("echoed", event.payload);
      break;
    case "inherit":
      emit("child", event.id);
      break;
    case "batch":
      emitAll([
        { name: "first", payload: "1" },
        { name: "second", payload: "2" },
      ]);
      break;
    case "fail-n": {
      const n = failN(event);
      if (n === undefined) throw new Reject(FAIL_N_USAGE);
      const attempts = event.meta.attempts;
      if (attempts <= n) throw new Retry(`attempt ${attempts} of ${n} fails`);
      emit("recovered", `{"attempts":${attempts}}`);
      break;
    }
    case "reject":
      throw new Reject("rejected by conformance");
    case "retry":
      throw new Retry("retry requested");
    case "log": {
      const text = event.text();
      if (text === undefined) throw new Reject("log needs a UTF-8 payload");
      log.info(text);
      log.warn("conformance warn line");
      break;
    }
    case "meta": {
      const { meta } = event;
      emit(
        "meta-echoed",
        JSON.stringify({
          id: event.id,
          name: event.name,
          correlation_id: meta.correlationId,
          attempts: meta.attempts,
          is_dry_run: meta.isDryRun,
          created_at_utc: meta.createdAtUtc,
        }),
      );
      break;
    }
    case "no-route":
      emit("unrouted", new Uint8Array(0));
      break;
    case "trap":
      throw new Error("trap requested");
    case "kv-count": {
      const bucket = kv.open("conformance");
      const n = bucket.increment("count", 1);
      if (bucket.getText("count") !== String(n)) throw new Reject("read its own write wrong");
      emit("counted", String(n));
      break;
    }
    case "kv-lost":
      kv.open("conformance").set("lost", "x");
      throw new Reject("kv write then reject");
    case "kv-check": {
      const bucket = kv.open("conformance");
      const count = bucket.getText("count");
      emit("kv-checked", `lost=${bucket.exists("lost")} count=${count === undefined ? "none" : count}`);
      break;
    }
    case "kv-denied":
      kv.open("other");
      break;
    case "config": {
      const orNone = (v) => (v === undefined ? "none" : v);
      log.info(`token=${orNone(config.get("token"))}`);
      emit("configured", `greeting=${orNone(config.get("greeting"))} missing=${orNone(config.get("missing"))}`);
      break;
    }
    case "config-reject":
      throw new Reject(`bad token ${config.get("token") ?? ""}`);
    case "http-get":
    case "http-post":
    case "http-denied":
    case "http-redirect":
      return http(event);
    default:
      break;
  }
});

// The HTTP cases: `fetch` is async, and so is this part of the handler.
async function http(event) {
  const base = config.require("http_base");
  switch (event.name) {
    case "http-get": {
      let r, body;
      try {
        r = await fetch(`${base}/hello`);
        body = await r.text();
      } catch {
        throw new Retry("http failed");
      }
      emit("http-got", `status=${r.status} x-conformance=${r.headers.get("x-conformance") ?? "none"} body=${body}`);
      return;
    }
    case "http-post": {
      let r, body;
      try {
        r = await fetch(`${base}/echo`, { method: "POST", body: event.payload });
        body = await r.text();
      } catch {
        throw new Retry("http failed");
      }
      emit("http-posted", `status=${r.status} ${body}`);
      return;
    }
    default: {
      const url = event.name === "http-denied" ? `${config.require("http_denied")}/hello` : `${base}/away`;
      try {
        await fetch(url);
      } catch {
        throw new Reject("http denied");
      }
      throw new Retry("expected a denial");
    }
  }
}

export const handleError = errorHandler((failure, event) => {
  log.error(
    `handle-error: ${failure.kind} attempt ${failure.attempt} last=${failure.isLastAttempt} ` +
      `event=${event !== undefined ? event.id : "none"}`,
  );
});
