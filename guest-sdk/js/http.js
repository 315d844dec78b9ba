// Outbound HTTP for Runnel plugins in JavaScript: the standard `fetch`
// (componentize-js implements it over `wasi:http`), with the event id as
// the idempotency key.
//
//   import { handler } from "runnel";
//   import { fetch } from "runnel/http.js";
//
//   export const handle = handler(async (event) => {
//     const price = await (await fetch(`${base}/prices/${sku}`)).json();
//     ...
//   });
//
// Requests go only to the hosts the plugin's config grants (`http = [...]`
// under `[plugin.grants]`); a refused one rejects with a TypeError. They are
// effects outside the event system: a redelivered or retried event sends
// them again. So every request other than GET and HEAD carries an
// `Idempotency-Key` header unless the plugin sets its own: the event id for
// the call's first such request, then `<id>:2`, `<id>:3`, ... In a dry run the host refuses all but GET and HEAD.
// Redirects are followed (up to 5), each hop granted or refused on its own.
//
// A separate module, so that a plugin that sends no requests imports no
// `wasi:http`; the build enables componentize-js's `http` feature for a
// plugin that uses `fetch`.
import { nextIdempotencyKey } from "./runnel.js";

const MAX_REDIRECTS = 5;

/** `fetch(input, init)`, adding an `Idempotency-Key` (see above) to
 * requests other than GET and HEAD that do not set one, and following redirects
 * (componentize-js's `fetch` returns them as they are) unless
 * `init.redirect` is `"manual"`. */
export async function fetch(input, init = {}) {
  const request = typeof input === "object" && input !== null && "method" in input ? input : undefined;
  let url = request ? request.url : String(input);
  let method = String(init.method || (request ? request.method : "GET")).toUpperCase();
  const headers = new Headers(init.headers || (request ? request.headers : undefined));
  if (method !== "GET" && method !== "HEAD" && !headers.has("idempotency-key")) {
    const key = nextIdempotencyKey();
    if (key !== undefined) headers.set("idempotency-key", key);
  }
  let body = init.body;
  for (let hop = 0; ; hop++) {
    const response = await globalThis.fetch(url, { ...init, method, headers, body });
    const location = response.headers.get("location");
    if (init.redirect === "manual" || ![301, 302, 303, 307, 308].includes(response.status) || location === null) {
      return response;
    }
    if (hop === MAX_REDIRECTS) throw new TypeError(`${url}: more than ${MAX_REDIRECTS} redirects`);
    const next = new URL(location, url);
    if (next.origin !== new URL(url).origin) {
      // Credentials are for the origin they were set for.
      for (const name of ["authorization", "cookie", "proxy-authorization"]) headers.delete(name);
    }
    url = next.toString();
    // As browsers do: a 303, or a 301/302 after a POST, becomes a GET.
    if (response.status === 303 || ([301, 302].includes(response.status) && method === "POST")) {
      method = "GET";
      body = undefined;
      headers.delete("content-type");
      headers.delete("content-length");
    }
  }
}
