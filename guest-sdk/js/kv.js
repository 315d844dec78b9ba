// Key-value state (`wasi:keyvalue`) for Runnel plugins in JavaScript,
// committed exactly once with the event: a call's writes take effect only
// if `handle` succeeds, together with its emitted events and the
// acknowledgement of the event; reads see the call's own writes. A plugin
// opens only the buckets its config grants (`kv = ["counts"]`).
//
//   import { kv } from "runnel/kv.js";
//   kv.open("counts").increment(`count:${event.name}`, 1);
//
// A separate module, so that a plugin without state imports nothing of it.
import { open as storeOpen } from "wasi:keyvalue/store@0.2.0-draft2";
import { increment as atomicIncrement } from "wasi:keyvalue/atomics@0.2.0-draft2";
import { getMany as batchGetMany } from "wasi:keyvalue/batch@0.2.0-draft2";
import { Retry } from "./runnel.js";

const utf8 = new TextEncoder();

/** A key-value operation failed: thrown out of `handle` it is a `Retry`. */
export class KvError extends Retry {
  constructor(bucket, reason) {
    super(`key-value bucket ${JSON.stringify(bucket)}: ${reason}`);
    this.bucket = bucket;
    this.reason = reason;
  }
}

function kvError(bucket, e) {
  const err = e && e.payload !== undefined ? e.payload : undefined;
  let reason;
  if (err && err.tag === "access-denied") {
    reason = `not granted: add kv = [${JSON.stringify(bucket)}] under the plugin's [plugin.grants]`;
  } else if (err && err.tag === "no-such-store") {
    reason = "no such store";
  } else if (err && err.tag === "other") {
    reason = String(err.val);
  } else {
    reason = String(e && e.message ? e.message : e);
  }
  return new KvError(bucket, reason);
}

function bytes(value) {
  if (typeof value === "string") return utf8.encode(value);
  if (value instanceof Uint8Array) return value;
  throw new TypeError("a value is a string or a Uint8Array");
}

/** An open bucket. */
export class Bucket {
  constructor(name, inner) {
    this.name = name;
    this.inner = inner;
  }

  #run(fn) {
    try {
      return fn();
    } catch (e) {
      throw kvError(this.name, e);
    }
  }

  /** The value of `key` (a Uint8Array), `undefined` when not set. */
  get(key) {
    return this.#run(() => this.inner.get(String(key)));
  }

  /** The value of `key` as UTF-8 text, `undefined` when not set. */
  getText(key) {
    const value = this.get(key);
    return value === undefined ? undefined : new TextDecoder().decode(value);
  }

  /** Sets `key` (text is stored as UTF-8) when the call succeeds. */
  set(key, value) {
    this.#run(() => this.inner.set(String(key), bytes(value)));
  }

  /** Removes `key` when the call succeeds. */
  delete(key) {
    this.#run(() => this.inner.delete(String(key)));
  }

  exists(key) {
    return this.#run(() => this.inner.exists(String(key)));
  }

  /** Adds `delta` to the integer at `key` (0 when not set) and returns the
   * sum, stored as decimal text. */
  increment(key, delta = 1) {
    return Number(this.#run(() => atomicIncrement(this.inner, String(key), BigInt(delta))));
  }

  /** The values of `keys`, in order (`undefined` for those not set). */
  getMany(keys) {
    return this.#run(() => batchGetMany(this.inner, keys.map(String))).map(([, v]) => v);
  }

  /** Every key of the bucket. */
  keys() {
    const out = [];
    let cursor;
    for (;;) {
      const page = this.#run(() => this.inner.listKeys(cursor));
      out.push(...page.keys);
      if (page.cursor === undefined || page.cursor === null) return out;
      cursor = page.cursor;
    }
  }
}

export const kv = {
  /** Opens a bucket the plugin's config grants. */
  open(name) {
    try {
      return new Bucket(name, storeOpen(String(name)));
    } catch (e) {
      throw kvError(name, e);
    }
  },
};
