// {{name}}: a Runnel plugin. `greet` events are answered with `greeted`.
import { handler, errorHandler, emitJson, log, Reject } from "./runnel.js";

export const handle = handler((event) => {
  if (event.name !== "greet") return; // not ours: acknowledged without doing anything
  const body = event.json(); // not JSON: rejected
  if (typeof body?.name !== "string") throw new Reject('a greet event needs a "name"');
  log.info(`greeting ${body.name}`);
  emitJson("greeted", { hello: body.name });
});

export const handleError = errorHandler((failure, event) => {
  if (event) log.error(`gave up on ${event.id}: ${failure.message}`);
});
