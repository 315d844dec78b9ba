// Write Runnel event handlers in JavaScript.
//
// A plugin is an ES module that exports `handle` (and optionally
// `handleError`), wrapped by this module's `handler` / `errorHandler`:
//
//   import { handler, Retry, emitJson, log } from "runnel";   // see README
//
//   export const handle = handler((event) => {
//     const order = event.json();                 // not JSON: Reject
//     if (order.sku === "OUT-OF-STOCK") throw new Retry("no stock yet");
//     log.info(`order ${order.order_id}`);
//     emitJson("order.enriched", order);          // no route: Retry
//   });
//
// Built with componentize-js (`componentize-js app.js -w wit -n handler
// -d stdio random clocks http fetch-event -o plugin.wasm`), the component
// imports nothing but the contract: no WASI.
//
// Everything here is a thin layer over the contract's imports
// (`runnel:plugin/host@0.2.0`) and the shape componentize-js gives the
// exports: records as objects with camelCase fields, `list<u8>` as
// Uint8Array, enums as their WIT names, a thrown value with a `payload` as
// the `err` of a `result`.
import { emit as hostEmit, log as hostLog } from "runnel:plugin/host@0.2.0";

/** Why `handle` did not succeed. Throw (or return) `Retry` or `Reject`. */
export class Refusal extends Error {
  constructor(tag, message) {
    super(String(message));
    this.name = tag === "retry" ? "Retry" : "Reject";
    // componentize-js turns a thrown value's `payload` into the `err` case.
    this.payload = { tag, val: String(message) };
  }
}

/** A transient failure: the host retries after the plugin's backoff, while
 * attempts remain, then dead-letters the event. */
export class Retry extends Refusal {
  constructor(message) {
    super("retry", message);
  }
}

/** A permanent failure: the host dead-letters the event now. */
export class Reject extends Refusal {
  constructor(message) {
    super("reject", message);
  }
}

const utf8 = new TextEncoder();

function decodeUtf8(bytes) {
  // `fatal` so that bytes that are not UTF-8 are an error, not U+FFFD.
  return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
}

/** An event: `id`, `name`, `meta` ({createdAtUtc, correlationId, attempts,
 * isDryRun}) and `payload` (Uint8Array). */
export class Event {
  constructor(raw) {
    this.id = raw.id;
    this.name = raw.name;
    this.meta = {
      createdAtUtc: raw.meta.createdAtUtc,
      correlationId: raw.meta.correlationId,
      attempts: raw.meta.attempts,
      isDryRun: raw.meta.isDryRun,
    };
    this.payload = raw.payload;
  }

  /** The payload decoded as JSON; a payload that is not JSON throws
   * `Reject` (it will never parse). */
  json() {
    try {
      return JSON.parse(decodeUtf8(this.payload));
    } catch (e) {
      throw new Reject(`payload is not the expected JSON: ${e.message ?? e}`);
    }
  }

  /** The payload as UTF-8 text, or `undefined` if it is not UTF-8. */
  text() {
    try {
      return decodeUtf8(this.payload);
    } catch {
      return undefined;
    }
  }
}

function logUncaught(where, e) {
  // WASI stderr is not linked, so an uncaught error would leave no trace but
  // the trap: put it in the host's log first.
  const detail = e && e.stack ? `${e}\n${e.stack}` : String(e);
  hostLog("error", `uncaught exception in ${where}: ${detail}`);
}

/** Wraps `fn(event)` as the component's `handle` export. Return normally to
 * acknowledge the event; throw (or return) `Retry` or `Reject` to refuse it.
 * Any other exception is logged and traps the call, like a panic in Rust. */
export function handler(fn) {
  const failed = (e) => {
    if (e instanceof Refusal) throw e;
    logUncaught("handle", e);
    throw e instanceof Error ? e : new Error(String(e));
  };
  const done = (verdict) => {
    if (verdict instanceof Refusal) throw verdict;
  };
  return function handle(raw) {
    setEventId(raw.id);
    let verdict;
    try {
      verdict = fn(new Event(raw));
    } catch (e) {
      setEventId("");
      failed(e);
    }
    // An async handler (one that awaits `fetch`): componentize-js runs the
    // event loop until its promise settles.
    if (verdict !== null && typeof verdict === "object" && typeof verdict.then === "function") {
      return verdict.then(
        (v) => {
          setEventId("");
          done(v);
        },
        (e) => {
          setEventId("");
          failed(e);
        },
      );
    }
    setEventId("");
    done(verdict);
  };
}

// The id of the event being handled ("" when none), and how many requests
// other than GET and HEAD this call has sent: their idempotency keys.
let eventId = "";
let keyed = 0;

function setEventId(id) {
  eventId = id;
  keyed = 0;
}

/** The next idempotency key of this call: the event id for its first
 * request other than GET and HEAD, then `<id>:2`, `<id>:3`, ... (the same
 * on every attempt that sends the same requests in the same order);
 * `undefined` outside an event. Used by `http.js`. */
export function nextIdempotencyKey() {
  if (eventId === "") return undefined;
  keyed += 1;
  return keyed === 1 ? eventId : `${eventId}:${keyed}`;
}

/** Wraps `fn(failure, event)` as the component's `handleError` export.
 * `failure` is {message, kind, attempt, isLastAttempt}, with `kind` one of
 * "handler-error", "rejected", "trap", "timeout", "decode"; `event` is present
 * only on the last attempt, when the host gives up. */
export function errorHandler(fn) {
  return function handleError(failure, raw) {
    setEventId(raw === undefined || raw === null ? "" : raw.id);
    const failed = (e) => {
      setEventId("");
      logUncaught("handleError", e);
      throw e instanceof Error ? e : new Error(String(e));
    };
    let result;
    try {
      result = fn(
        {
          message: failure.message,
          kind: failure.kind,
          attempt: failure.attempt,
          isLastAttempt: failure.isLastAttempt,
        },
        raw === undefined || raw === null ? undefined : new Event(raw),
      );
    } catch (e) {
      failed(e);
    }
    // An async error handler runs to its end, as an async handler does.
    if (result !== null && typeof result === "object" && typeof result.then === "function") {
      return result.then(() => setEventId(""), failed);
    }
    setEventId("");
  };
}

function toBytes(payload) {
  if (payload === undefined) return new Uint8Array(0);
  if (typeof payload === "string") return utf8.encode(payload);
  if (payload instanceof Uint8Array) return payload;
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  if (ArrayBuffer.isView(payload)) {
    return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  }
  throw new TypeError("a payload is a string, a Uint8Array or an ArrayBuffer");
}

/** Emits several events at once, `[{name, payload}, ...]`: all of them, or
 * none if one cannot be published. They are published only if this call to
 * `handle` succeeds. An error (no route for a name) throws `Retry`. */
export function emitAll(events) {
  const batch = events.map(({ name, payload }) => ({ name: String(name), payload: toBytes(payload) }));
  try {
    hostEmit(batch);
  } catch (e) {
    const reason = e && e.payload !== undefined ? e.payload : e && e.message ? e.message : e;
    throw new Retry(String(reason));
  }
}

/** Emits one event with raw bytes (Uint8Array) or UTF-8 text as payload. */
export function emit(name, payload) {
  emitAll([{ name, payload }]);
}

/** Emits one event with `value` serialised as its JSON payload (compact, as
 * Rust's serde_json writes it). A value that cannot be encoded throws
 * `Reject`. */
export function emitJson(name, value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    throw new Reject(`cannot encode ${name}: ${e.message ?? e}`);
  }
  if (text === undefined) throw new Reject(`cannot encode ${name}: not a JSON value`);
  emit(name, text);
}

/** Lines in the host's log, tagged with the plugin and the event. */
export const log = {
  trace: (message) => hostLog("trace", String(message)),
  debug: (message) => hostLog("debug", String(message)),
  info: (message) => hostLog("info", String(message)),
  warn: (message) => hostLog("warn", String(message)),
  error: (message) => hostLog("error", String(message)),
};
