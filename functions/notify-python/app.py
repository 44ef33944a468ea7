"""The notify function in Python: tells people their thumbnails are ready.

The same function as functions/notify (Rust) and functions/notify-js, with
the same outputs byte for byte: it reads the JSON report the thumbnail
function publishes and writes one notification (a short message plus the
report's source and thumbnail list) to each configured notification sink
the pipeline declares. A pipeline that declares none of them is
misconfigured, which never fixes itself, so every error is a Reject.
"""

import json

import runnel

#: Where notifications go when `sinks` is not configured.
DEFAULT_SINKS = ["notifications", "webhook"]


def handle(ctx: runnel.Context, event: runnel.Event) -> list[runnel.Output]:
    configured = sink_names(ctx.config)
    sinks = [name for name in configured if name in ctx.sinks]
    if not sinks:
        raise runnel.Reject(
            f"none of the sinks in config `sinks` ({', '.join(configured)}) is declared by "
            f"pipeline `{ctx.pipeline}` (it has: {', '.join(ctx.sinks)})"
        )
    try:
        report = json.loads(event.data.decode("utf-8"), parse_constant=not_json, parse_float=finite)
        key, notification = notify(report)
        data = to_json(notification)
    except ValueError as error:
        raise runnel.Reject(f"{describe(event)}: not an image-processed report ({error})")
    runnel.log.info(f"{notification['message']} -> {', '.join(sinks)}")
    return [
        runnel.Output(sink, data=data, key=key, content_type="application/json")
        for sink in sinks
    ]


def sink_names(config: dict[str, str]) -> list[str]:
    """`[function.config]`'s `sinks`: a list (JSON-encoded) or a comma list."""
    if "sinks" not in config:
        return list(DEFAULT_SINKS)
    value = config["sinks"]
    text = value.strip()
    if text.startswith("["):
        try:
            names = json.loads(text)
        except ValueError as error:
            raise runnel.Reject(f"config `sinks` = {value!r}: not a list of sink names ({error})")
        if not all(isinstance(n, str) for n in names):
            raise runnel.Reject(f"config `sinks` = {value!r}: not a list of sink names")
    else:
        names = [n.strip() for n in text.split(",")]
    names = [n for n in names if n]
    if not names:
        raise runnel.Reject(f"config `sinks` = {value!r}: no sinks given")
    return names


def notify(report) -> tuple[str, dict]:
    """The object key and the notification for an image-processed report;
    `source` and `thumbnails` pass through untouched."""
    if not isinstance(report, dict):
        raise ValueError("the report is not a JSON object")
    source = report.get("source")
    if "source" not in report:
        raise ValueError("missing field `source`")
    key = source.get("key") if isinstance(source, dict) else None
    if not isinstance(key, str):
        raise ValueError("`source.key` is missing or not a string")
    metadata = report.get("metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("`metadata` is not a map of strings")
    thumbnails = report.get("thumbnails")
    if not isinstance(thumbnails, list):
        raise ValueError("`thumbnails` is missing or not a list")
    user = metadata.get("user")
    count = len(thumbnails)
    noun = "thumbnail" if count == 1 else "thumbnails"
    message = f"{key} for {user}: {count} {noun} ready" if user is not None else f"{key}: {count} {noun} ready"
    return key, {"message": message, "user": user, "source": source, "thumbnails": thumbnails}


def to_json(notification: dict) -> bytes:
    """Compact JSON, UTF-8, the fields in their order and the keys of the
    objects passed through sorted: what the Rust function writes."""
    ordered = {name: sort_keys(value) for name, value in notification.items()}
    return json.dumps(ordered, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def sort_keys(value):
    if isinstance(value, dict):
        return {k: sort_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sort_keys(v) for v in value]
    return value


def finite(text: str) -> float:
    """A JSON number as Rust reads it: one too large for a double is an error."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} out of range")
    return value


def not_json(constant: str):
    """JSON has no NaN or Infinity (Python's reader would take them)."""
    raise ValueError(f"{constant} is not JSON")


def describe(event: runnel.Event) -> str:
    """Names the event for an error: its subject when it has one, and its id."""
    if event.subject is not None:
        return f"event {event.id} (subject {event.subject})"
    return f"event {event.id}"
