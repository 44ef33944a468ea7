// {{name}}: a runnel function (created by `runnel new js {{name}}`).
//
// It reads a JSON event such as {"name": "Dora"} and writes a greeting to
// the pipeline's `results` sink. Edit `greet` (and its tests: `npm test`) to
// make it yours; `runnel up` rebuilds it when its sources change. runnel/ is
// runnel's SDK, for your editor and tests: the build brings its own.

import { Output, Reject, log } from "runnel";

export function handle(ctx, event) {
  let greeting;
  try {
    greeting = greet(event.json());
  } catch (error) {
    // Bad input never gets better: dead-letter it without retries.
    throw new Reject(`event ${event.id}: ${error.message}`);
  }
  log.info(greeting);
  const data = JSON.stringify({ greeting });
  return [new Output("results", data, { key: event.subject, contentType: "application/json" })];
}

/** The greeting for an event's JSON payload. */
export function greet(request) {
  const name = request?.name;
  if (typeof name !== "string") throw new Error('no "name" string in the event');
  return `Hello, ${name}!`;
}
