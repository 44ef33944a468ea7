// Tests of {{name}}'s logic under Node.js: `npm test`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { _handle } from "runnel";
import { handle } from "./index.js";

const event = (text) => ({
  id: "evt-1",
  source: "runnel://test",
  eventType: "runnel.message",
  subject: "sample.json",
  attributes: [],
  data: new TextEncoder().encode(text),
});
const ctx = { pipeline: "{{name}}", config: [], sinks: [], attempt: 1 };

test("greets by name", () => {
  const [output] = _handle(handle, ctx, event('{"name": "Dora"}'));
  assert.equal(output.sink, "results");
  assert.equal(new TextDecoder().decode(output.data), '{"greeting":"Hello, Dora!"}');
});

test("refuses what it cannot read", () => {
  for (const text of ["{not json", '{"name": 7}']) {
    assert.throws(() => _handle(handle, ctx, event(text)), (e) => e.retryable === false);
  }
});
