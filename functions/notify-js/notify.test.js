// The notify function's logic under Node.js (`npm test` in this directory;
// scripts/test runs it), through runnel's SDK glue as the component runs it.
import assert from "node:assert/strict";
import { test } from "node:test";

import { _handle } from "runnel";
import { handle, notify, sinkNames } from "./notify.js";

const REPORT = JSON.stringify({
  source: { key: "photos/photo.jpg", bucket: "uploads", size: 5, etag: "e" },
  metadata: { user: "alice" },
  thumbnails: [{ width: 128, key: "a", 10: "x", 9: "y" }, { key: "b" }, { key: "c" }],
});

const context = (sinks, config = []) => ({
  pipeline: "notify",
  config,
  sinks: sinks.map((name) => ({ name, kind: "topic", target: `${name}-target` })),
  attempt: 1,
});

const message = (data) => ({
  id: "evt-7",
  source: "topic://image-processed",
  eventType: "runnel.message",
  subject: "photos/photo.jpg",
  contentType: "application/json",
  attributes: [],
  data: typeof data === "string" ? new TextEncoder().encode(data) : data,
});

const run = (ctx, event) => _handle(handle, ctx, event);
const rejection = (ctx, event) => {
  try {
    run(ctx, event);
  } catch (error) {
    return error;
  }
  assert.fail("not rejected");
};

test("notifies every declared sink, with Rust's bytes", () => {
  const outputs = run(context(["notifications", "webhook"]), message(REPORT));
  assert.deepEqual(outputs.map((o) => o.sink), ["notifications", "webhook"]);
  assert.equal(outputs[0].key, "photos/photo.jpg");
  assert.equal(outputs[0].contentType, "application/json");
  assert.deepEqual(outputs[0].attributes, []);
  assert.equal(
    new TextDecoder().decode(outputs[0].data),
    '{"message":"photos/photo.jpg for alice: 3 thumbnails ready","user":"alice",' +
      '"source":{"bucket":"uploads","etag":"e","key":"photos/photo.jpg","size":5},' +
      '"thumbnails":[{"10":"x","9":"y","key":"a","width":128},{"key":"b"},{"key":"c"}]}',
  );
});

test("skips undeclared sinks", () => {
  assert.deepEqual(run(context(["notifications", "audit"]), message(REPORT)).map((o) => o.sink), ["notifications"]);
  const audit = run(context(["audit"], [["sinks", '["audit"]']]), message(REPORT));
  assert.deepEqual(audit.map((o) => o.sink), ["audit"]);
});

test("spellings of sinks", () => {
  assert.deepEqual(sinkNames({ sinks: '["a","b"]' }), ["a", "b"]);
  assert.deepEqual(sinkNames({ sinks: "a, b" }), ["a", "b"]);
  assert.deepEqual(sinkNames({ sinks: "a" }), ["a"]);
  for (const bad of ["", "[]", " , ", "[1,2]", '["a"']) {
    assert.throws(() => sinkNames({ sinks: bad }), (e) => e.message.startsWith("config `sinks`"), bad);
  }
});

test("no sink at all is rejected, not retried", () => {
  const error = rejection(context(["other"]), message(REPORT));
  assert.equal(error.retryable, false);
  assert.match(error.message, /config `sinks`/);
});

test("bad reports are rejected naming the event", () => {
  const bad = [
    "{not json",
    "NaN",
    "[]",
    '{"thumbnails":[]}',
    '{"source":{"bucket":"b"},"thumbnails":[]}',
    '{"source":{"key":"k"},"metadata":{"user":1},"thumbnails":[]}',
    '{"source":{"key":"k"},"metadata":null,"thumbnails":[]}',
    '{"source":{"key":"k"}}',
    new Uint8Array([0xff]),
    '{"source":{"key":"k"},"thumbnails":[{"width":1e400}]}',
    '\ufeff{"source":{"key":"k"},"thumbnails":[]}',
  ];
  for (const data of bad) {
    const error = rejection(context(["notifications"]), message(data));
    assert.equal(error.retryable, false);
    assert.ok(
      error.message.startsWith("event evt-7 (subject photos/photo.jpg): not an image-processed report"),
      `${data}: ${error.message}`,
    );
  }
});

test("without an uploader, one thumbnail", () => {
  const [key, notification] = notify({ source: { key: "k" }, thumbnails: [{}] });
  assert.deepEqual([key, notification.message, notification.user], ["k", "k: 1 thumbnail ready", null]);
});
