// The notify function in JavaScript: tells people their thumbnails are ready.
//
// The same function as functions/notify (Rust) and functions/notify-python,
// with the same outputs byte for byte: it reads the JSON report the
// thumbnail function publishes and writes one notification (a short
// message plus the report's source and thumbnail list) to each configured
// notification sink the pipeline declares. A pipeline that declares none of
// them is misconfigured, which never fixes itself, so every error is a Reject.

import { Output, Reject, log } from "runnel";

/** Where notifications go when `sinks` is not configured. */
const DEFAULT_SINKS = ["notifications", "webhook"];

export function handle(ctx, event) {
  const configured = sinkNames(ctx.config);
  const sinks = configured.filter((name) => name in ctx.sinks);
  if (sinks.length === 0) {
    throw new Reject(
      `none of the sinks in config \`sinks\` (${configured.join(", ")}) is declared by ` +
        `pipeline \`${ctx.pipeline}\` (it has: ${Object.keys(ctx.sinks).join(", ")})`,
    );
  }
  let key, notification, data;
  try {
    [key, notification] = notify(finite(event.json()));
    data = toJson(notification);
  } catch (error) {
    throw new Reject(`${describe(event)}: not an image-processed report (${error.message})`);
  }
  log.info(`${notification.message} -> ${sinks.join(", ")}`);
  return sinks.map((sink) => new Output(sink, data, { key, contentType: "application/json" }));
}

/** `[function.config]`'s `sinks`: a list (JSON-encoded) or a comma list. */
export function sinkNames(config) {
  if (!("sinks" in config)) return [...DEFAULT_SINKS];
  const value = config.sinks;
  const text = value.trim();
  let names;
  if (text.startsWith("[")) {
    try {
      names = JSON.parse(text);
    } catch (error) {
      throw new Reject(`config \`sinks\` = ${JSON.stringify(value)}: not a list of sink names (${error.message})`);
    }
    if (!Array.isArray(names) || !names.every((n) => typeof n === "string")) {
      throw new Reject(`config \`sinks\` = ${JSON.stringify(value)}: not a list of sink names`);
    }
  } else {
    names = text.split(",").map((n) => n.trim());
  }
  names = names.filter((n) => n !== "");
  if (names.length === 0) throw new Reject(`config \`sinks\` = ${JSON.stringify(value)}: no sinks given`);
  return names;
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/**
 * The object key and the notification for an image-processed report;
 * `source` and `thumbnails` pass through untouched.
 */
export function notify(report) {
  if (!isObject(report)) throw new Error("the report is not a JSON object");
  if (!("source" in report)) throw new Error("missing field `source`");
  const source = report.source;
  const key = isObject(source) ? source.key : undefined;
  if (typeof key !== "string") throw new Error("`source.key` is missing or not a string");
  const metadata = report.metadata ?? {};
  if (!isObject(metadata) || !Object.values(metadata).every((v) => typeof v === "string")) {
    throw new Error("`metadata` is not a map of strings");
  }
  if ("metadata" in report && report.metadata === null) throw new Error("`metadata` is not a map of strings");
  const thumbnails = report.thumbnails;
  if (!Array.isArray(thumbnails)) throw new Error("`thumbnails` is missing or not a list");
  const user = Object.hasOwn(metadata, "user") ? metadata.user : null;
  const count = thumbnails.length;
  const noun = count === 1 ? "thumbnail" : "thumbnails";
  const message = user !== null ? `${key} for ${user}: ${count} ${noun} ready` : `${key}: ${count} ${noun} ready`;
  return [key, { message, user, source, thumbnails }];
}

/**
 * Compact JSON, the fields in their order and the keys of the objects
 * passed through sorted by code point: what the Rust function writes.
 * (Written here rather than by rebuilding objects, because a JavaScript
 * object puts keys such as "10" before "9" whatever their order.)
 */
export function toJson(notification) {
  const fields = Object.entries(notification).map(([k, v]) => `${JSON.stringify(k)}:${sorted(v)}`);
  return `{${fields.join(",")}}`;
}

function sorted(value) {
  if (Array.isArray(value)) return `[${value.map(sorted).join(",")}]`;
  if (isObject(value)) {
    const fields = Object.keys(value)
      .sort(byCodePoint)
      .map((k) => `${JSON.stringify(k)}:${sorted(value[k])}`);
    return `{${fields.join(",")}}`;
  }
  return JSON.stringify(value);
}

function byCodePoint(a, b) {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

/**
 * `value`, when every number in it is one Rust reads: JSON.parse makes
 * Infinity of a number too large for a double, which Rust refuses.
 */
function finite(value) {
  if (typeof value === "number" && !Number.isFinite(value)) throw new Error("a number is out of range");
  if (value !== null && typeof value === "object") Object.values(value).forEach(finite);
  return value;
}

/** Names the event for an error: its subject when it has one, and its id. */
function describe(event) {
  return event.subject !== null ? `event ${event.id} (subject ${event.subject})` : `event ${event.id}`;
}
