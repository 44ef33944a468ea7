// runnel's JavaScript SDK: the types a JavaScript function is written with.
//
// A JavaScript function is a project directory with a package.json whose
// `main` module (default index.js) exports:
//
//     import { Output, Reject, log } from "runnel";
//
//     export function handle(ctx, event) {
//       const report = event.json();
//       log.info(`${event.subject}: ${Object.keys(report).length} fields`);
//       return [new Output("notifications", "...", { key: event.subject })];
//     }
//
// runnel builds it with jco componentize against its WIT (runnel:function),
// bundling the module, its imports and its npm dependencies, with `runnel`
// resolved to this file, which runnel adds to the build itself (a project
// may depend on a copy, for an editor or for tests run with Node.js, where
// `log` writes to standard error).
//
// - `ctx.config` is the pipeline's [function.config] as an object: strings
//   as they are, other TOML values JSON-encoded (`ctx.configValue` decodes
//   them); `ctx.sinks` maps each declared sink's name to { name, kind, target }.
// - `event.attributes` is an object; `event.data` a Uint8Array
//   (`event.text()`, `event.json()`).
// - `variable(name)` is the pipeline's [function.variables] value (a setting
//   or a secret), or null.
// - `kv` (get, set(key, value, ttlMs), delete, compareAndSwap, increment) is
//   the key-value store the pipeline's [function.capabilities] kv grants; a
//   failure throws a KvError.
// - Return an array of Output (or of plain { sink, data, key, contentType,
//   attributes } objects); `data` may be a Uint8Array or a string (UTF-8).
// - `throw new Reject(message)` for an event that can never succeed (it goes
//   to the dead-letter sink at once), `throw new Retry(message)` for a
//   transient failure (retried with backoff). Anything else thrown is a bug:
//   the event fails without retries and its dead letter carries the stack.

// Marks Reject and Retry by a registered symbol rather than by class, so
// two copies of this module (a project's own and the build's) agree.
const RETRYABLE = Symbol.for("runnel.retryable");

/** The event can never succeed: dead-lettered without retries. */
export class Reject extends Error {
  constructor(message) {
    super(message);
    this.name = "Reject";
    this[RETRYABLE] = false;
  }
}

/** A transient failure: the event is tried again, with backoff. */
export class Retry extends Error {
  constructor(message) {
    super(message);
    this.name = "Retry";
    this[RETRYABLE] = true;
  }
}

/** One thing to write to a declared sink. */
export class Output {
  /**
   * @param {string} sink a declared sink's name
   * @param {Uint8Array | string} data
   * @param {{ key?: string, contentType?: string, attributes?: Record<string, string> }} [options]
   *   `key`: the object key (required for storage sinks) or the message key
   */
  constructor(sink, data = new Uint8Array(), options = {}) {
    this.sink = sink;
    this.data = data;
    this.key = options.key;
    this.contentType = options.contentType;
    this.attributes = options.attributes ?? {};
  }
}

let witLog = null;
let witVariables = null;
// Whether `handle` is running: variables are read then, not while the
// build runs the modules' top level (its snapshot would keep the value).
let handling = false;

let witKv = null;

/** Installs the WIT imports; runnel's build does, Node.js tests do not. */
export function _useImports(log, variables, kvStore) {
  witLog = log;
  witVariables = variables;
  witKv = kvStore;
}

/**
 * A key-value call failed: `kind` is "not-granted", "too-large", "invalid"
 * or "unavailable" (the one worth retrying). Uncaught, it fails the event,
 * retried when `retryable`.
 */
export class KvError extends Error {
  constructor(kind, message) {
    super(`key-value store: ${kind}: ${message}`);
    this.name = "KvError";
    this.kind = kind;
    this[RETRYABLE] = kind === "unavailable";
  }
}

const bytesOf = (value) => (typeof value === "string" ? new TextEncoder().encode(value) : value);

/** What Node.js tests see as the store: a Map, without expiry. */
export const testKv = new Map();

function kvCall(name, args, test) {
  if (!witKv) return test();
  try {
    return witKv[name](...args);
  } catch (error) {
    const payload = error?.payload;
    if (payload && typeof payload.tag === "string") throw new KvError(payload.tag, String(payload.val));
    throw error;
  }
}

/**
 * Key-value state that outlives an event, on the store the pipeline's
 * `[function.capabilities] kv` grants (its keys the pipeline's own). A
 * write is not undone when the event later fails: a retried event runs it
 * again. Values are Uint8Arrays (strings are stored as UTF-8).
 */
export const kv = {
  get: (key) => kvCall("get", [key], () => testKv.get(key)) ?? null,
  set: (key, value, ttlMs = undefined) =>
    kvCall("set", [key, bytesOf(value), ttlMs === undefined ? undefined : BigInt(ttlMs)], () => {
      testKv.set(key, bytesOf(value));
    }),
  delete: (key) => kvCall("delete", [key], () => testKv.delete(key)),
  compareAndSwap: (key, expected, value, ttlMs = undefined) =>
    kvCall(
      "compareAndSwap",
      [key, expected === null ? undefined : bytesOf(expected), bytesOf(value), ttlMs === undefined ? undefined : BigInt(ttlMs)],
      () => {
        const now = testKv.get(key);
        const same = (a, b) => (a === undefined ? b === null : b !== null && a.length === b.length && a.every((x, i) => x === bytesOf(b)[i]));
        if (!same(now, expected)) return false;
        testKv.set(key, bytesOf(value));
        return true;
      },
    ),
  increment: (key, delta = 1) =>
    Number(
      kvCall("increment", [key, BigInt(delta)], () => {
        const sum = Number(new TextDecoder().decode(testKv.get(key) ?? bytesOf("0"))) + delta;
        testKv.set(key, bytesOf(String(sum)));
        return sum;
      }),
    ),
};

/** What `variable` answers under Node.js (tests set it). */
export const testVariables = {};

/**
 * The pipeline's `[function.variables]` value called `name` (a setting or a
 * secret), or null when the pipeline sets no such variable.
 */
export function variable(name) {
  if (witVariables && !handling) {
    throw new Error(
      `variable(${JSON.stringify(name)}) is read inside handle: at a module's top level it would run when the function is built`,
    );
  }
  if (witVariables) return witVariables(name) ?? null;
  return Object.hasOwn(testVariables, name) ? testVariables[name] : null;
}

function write(level, message) {
  if (witLog) {
    witLog(level, String(message));
  } else {
    console.error(`${level}: ${message}`);
  }
}

/** Lines in runnel's log, tagged with the pipeline, function and event. */
export const log = {
  trace: (message) => write("trace", message),
  debug: (message) => write("debug", message),
  info: (message) => write("info", message),
  warn: (message) => write("warn", message),
  error: (message) => write("error", message),
};

const utf8 = new TextEncoder();
// Strict, as Python's and Rust's are: invalid UTF-8 is an error, not U+FFFD,
// and a byte-order mark is kept (so JSON after one is an error, as in Rust).
const strictUtf8 = () => new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** A context as the function sees it, from the WIT record (exported for tests). */
export function _context(ctx) {
  const config = Object.fromEntries(ctx.config);
  return Object.freeze({
    pipeline: ctx.pipeline,
    config,
    sinks: Object.fromEntries(ctx.sinks.map((s) => [s.name, { ...s }])),
    attempt: ctx.attempt,
    /** `[function.config]`'s `key` as the TOML value it was. */
    configValue(key, fallback = undefined) {
      if (!(key in config)) return fallback;
      try {
        return JSON.parse(config[key]);
      } catch {
        return config[key];
      }
    },
  });
}

/** An event as the function sees it, from the WIT record (exported for tests). */
export function _event(e) {
  return Object.freeze({
    id: e.id,
    source: e.source,
    type: e.eventType,
    subject: e.subject ?? null,
    contentType: e.contentType ?? null,
    attributes: Object.fromEntries(e.attributes),
    data: e.data,
    /** The payload as UTF-8 text (a TypeError when it is not UTF-8). */
    text() {
      return strictUtf8().decode(e.data);
    },
    /** The payload decoded as JSON (a SyntaxError or TypeError when not). */
    json() {
      return JSON.parse(strictUtf8().decode(e.data));
    },
  });
}

/** A WIT error: the export's `result` error case. */
function failure(message, retryable) {
  return { message, retryable };
}

function lower(output, i) {
  const wrong = (what) => failure(`handle's output #${i} ${what}`, false);
  if (output === null || typeof output !== "object") {
    throw wrong(`is ${JSON.stringify(output)}, not an Output`);
  }
  if (typeof output.sink !== "string") throw wrong("has no sink name (a string)");
  const text = (field) => {
    const value = output[field];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== "string") throw wrong(`has a ${field} that is not a string`);
    return value;
  };
  const data = output.data ?? new Uint8Array();
  let bytes;
  if (typeof data === "string") bytes = utf8.encode(data);
  else if (data instanceof Uint8Array) bytes = data;
  else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else throw wrong("has data that is neither a string nor bytes (JSON.stringify an object first)");
  const attributes = output.attributes ?? {};
  if (typeof attributes !== "object") throw wrong("has attributes that are not an object");
  return {
    sink: output.sink,
    key: text("key"),
    contentType: text("contentType"),
    attributes: Object.entries(attributes).map(([k, v]) => [String(k), String(v)]),
    data: bytes,
  };
}

/** What the function threw, as the WIT error: Reject and Retry as they
 * say; anything else not retried, with its stack. */
function thrown(error) {
  const retryable = error?.[RETRYABLE];
  if (typeof retryable === "boolean") return failure(error.message, retryable);
  const text = error instanceof Error ? `${error.stack ? `${error}\n${error.stack}` : error}` : String(error);
  return failure(text.length <= 4096 ? text : `...\n${text.slice(-4000)}`, false);
}

/**
 * The glue runnel's build puts between the WIT export and `handle`: the
 * WIT records in, runnel's types to the function, outputs lowered.
 */
export function _handle(handle, ctx, e) {
  handling = true;
  let outputs;
  try {
    outputs = handle(_context(ctx), _event(e));
  } catch (error) {
    throw thrown(error);
  } finally {
    handling = false;
  }
  if (outputs === undefined || outputs === null) return [];
  if (typeof outputs.then === "function") {
    throw failure("handle returned a Promise: a runnel function is synchronous", false);
  }
  if (typeof outputs[Symbol.iterator] !== "function" || typeof outputs === "string") {
    throw failure("handle returned something other than a list of outputs", false);
  }
  return Array.from(outputs, lower);
}
