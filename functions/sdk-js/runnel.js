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
// - Return an array of Output (or of plain { sink, data, key, contentType,
//   attributes } objects); `data` may be a Uint8Array or a string (UTF-8).
// - `throw new Reject(message)` for an event that can never succeed (it goes
//   to the dead-letter sink at once), `throw new Retry(message)` for a
//   transient failure (retried with backoff). Anything else thrown is a bug:
//   the event fails without retries and its dead letter carries the stack.

/** The event can never succeed: dead-lettered without retries. */
export class Reject extends Error {
  constructor(message) {
    super(message);
    this.name = "Reject";
  }
}

/** A transient failure: the event is tried again, with backoff. */
export class Retry extends Error {
  constructor(message) {
    super(message);
    this.name = "Retry";
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

/** Installs the WIT imports; runnel's build does, Node.js tests do not. */
export function _useImports(log, variables) {
  witLog = log;
  witVariables = variables;
}

/** What `variable` answers under Node.js (tests set it). */
export const testVariables = {};

/**
 * The pipeline's `[function.variables]` value called `name` (a setting or a
 * secret), or null when the pipeline sets no such variable.
 */
export function variable(name) {
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
// Strict, as Python's and Rust's are: invalid UTF-8 is an error, not U+FFFD.
const strictUtf8 = () => new TextDecoder("utf-8", { fatal: true });

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
  if (output === null || typeof output !== "object" || typeof output.sink !== "string") {
    throw failure(`handle returned ${JSON.stringify(output)} as output #${i}, not an Output`, false);
  }
  const data = output.data ?? new Uint8Array();
  return {
    sink: output.sink,
    key: output.key ?? undefined,
    contentType: output.contentType ?? undefined,
    attributes: Object.entries(output.attributes ?? {}).map(([k, v]) => [String(k), String(v)]),
    data: typeof data === "string" ? utf8.encode(data) : new Uint8Array(data),
  };
}

/**
 * The glue runnel's build puts between the WIT export and `handle`: the
 * WIT records in, runnel's types to the function, outputs lowered.
 */
export function _handle(handle, ctx, e) {
  let outputs;
  try {
    outputs = handle(_context(ctx), _event(e));
  } catch (error) {
    if (error instanceof Reject) throw failure(error.message, false);
    if (error instanceof Retry) throw failure(error.message, true);
    const text = error instanceof Error ? `${error.stack ? `${error}\n${error.stack}` : error}` : String(error);
    throw failure(text.length <= 4096 ? text : `...\n${text.slice(-4000)}`, false);
  }
  if (outputs === undefined || outputs === null) return [];
  if (typeof outputs.then === "function") {
    throw failure("handle returned a Promise: a runnel function is synchronous", false);
  }
  return Array.from(outputs, lower);
}
