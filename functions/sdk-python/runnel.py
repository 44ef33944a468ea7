"""runnel's Python SDK: the types a Python function is written with.

A Python function is a project directory with an ``app.py`` that defines::

    import runnel

    def handle(ctx: runnel.Context, event: runnel.Event) -> list[runnel.Output]:
        report = event.json()
        runnel.log.info(f"{event.subject}: {len(report)} fields")
        return [runnel.Output("notifications", data=b"...", key=event.subject)]

runnel builds it with componentize-py against its WIT (``runnel:function``)
and this module, which it adds to the build itself: a project needs no copy
(keep one beside ``app.py`` for an editor or for tests run with plain
CPython, where ``runnel.log`` prints to standard error).

- ``ctx.config`` is the pipeline's ``[function.config]`` as a dict: strings
  as they are, other TOML values JSON-encoded (``ctx.config_value`` decodes
  them); ``ctx.sinks`` maps each declared sink's name to its ``Sink``.
- ``event.attributes`` is a dict; ``event.data`` is ``bytes``
  (``event.text()``, ``event.json()``).
- ``runnel.variable(name)`` is the pipeline's ``[function.variables]``
  value (a setting or a secret), or None.
- ``runnel.kv`` (``get``, ``set(key, value, ttl_ms=None)``, ``delete``,
  ``compare_and_swap``, ``increment``) is the key-value store the
  pipeline's ``[function.capabilities] kv`` grants; a failure raises
  ``runnel.KvError``.
- ``runnel.http`` (``get(url)``, ``post(url, body, headers=None)``,
  ``request(method, url, headers=None, body=None)``) sends requests to the
  URLs the pipeline's ``[function.capabilities] http`` allows and returns a
  ``runnel.Response`` (``status``, ``headers``, ``body``, ``text()``,
  ``json()``, ``header(name)``); a refusal, a timeout or an oversized
  response raises ``runnel.HttpError``. Under plain CPython, set
  ``runnel.http.test_responder`` to answer requests in tests.
- Return a list of ``Output``; ``data`` may be ``bytes`` or ``str`` (UTF-8).
- Import modules at the top of ``app.py`` (or of the modules it imports):
  the build runs those imports and snapshots the result; a module first
  imported inside ``handle`` cannot be found, since a function has no file
  system.
- ``raise runnel.Reject(message)`` for an event that can never succeed (it
  goes to the dead-letter sink at once), ``raise runnel.Retry(message)`` for
  a transient failure (retried with backoff). Any other exception is a bug:
  the event fails without retries (the same event would fail the same way)
  and its dead letter carries the traceback.
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional, Union

__all__ = ["Context", "Event", "KvError", "Output", "Reject", "Retry", "Sink", "kv", "log", "variable"]


class Reject(Exception):
    """The event can never succeed: dead-lettered without retries."""


class Retry(Exception):
    """A transient failure: the event is tried again, with backoff."""


@dataclass(frozen=True)
class Sink:
    """A sink the pipeline declares."""

    name: str
    #: ``storage``, ``topic`` or ``webhook``.
    kind: str
    #: The bucket, the topic or the URL.
    target: str


@dataclass(frozen=True)
class Context:
    """What a function knows about the invocation besides the event."""

    pipeline: str
    config: dict[str, str]
    sinks: dict[str, Sink]
    #: 1 on the first attempt, 2 on the first retry, ...
    attempt: int

    def config_value(self, key: str, default: Any = None) -> Any:
        """``[function.config]``'s ``key`` as the TOML value it was: a
        string as it is, a number, boolean, array or table decoded."""
        if key not in self.config:
            return default
        text = self.config[key]
        try:
            return json.loads(text)
        except ValueError:
            return text


@dataclass(frozen=True)
class Event:
    """One event, shaped after CloudEvents."""

    id: str
    #: e.g. ``storage://uploads`` or ``topic://image-processed``.
    source: str
    #: e.g. ``runnel.object.created`` or ``runnel.message``.
    type: str
    subject: Optional[str]
    content_type: Optional[str]
    attributes: dict[str, str]
    data: bytes

    def text(self) -> str:
        """The payload as UTF-8 text."""
        return self.data.decode("utf-8")

    def json(self) -> Any:
        """The payload decoded as JSON (strict UTF-8: a byte-order mark or
        NaN is an error, as in runnel's Rust SDK)."""
        return json.loads(self.data.decode("utf-8"), parse_constant=_not_json)


@dataclass
class Output:
    """One thing to write to a declared sink."""

    sink: str
    data: Union[bytes, str] = b""
    #: The object key (required for storage sinks) or the message key.
    key: Optional[str] = None
    content_type: Optional[str] = None
    attributes: dict[str, str] = field(default_factory=dict)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


class _Log:
    """Lines in runnel's log, tagged with the pipeline, function and event."""

    _LEVELS = ("trace", "debug", "info", "warn", "error")

    def __init__(self) -> None:
        try:
            from wit_world.imports import log as wit_log  # type: ignore
        except ImportError:  # plain CPython: tests, an editor
            wit_log = None
        self._wit = wit_log

    def _write(self, level: str, message: str) -> None:
        if self._wit is None:
            print(f"{level}: {message}", file=sys.stderr)
        else:
            self._wit.log(getattr(self._wit.Level, level.upper()), str(message))

    def trace(self, message: str) -> None:
        self._write("trace", message)

    def debug(self, message: str) -> None:
        self._write("debug", message)

    def info(self, message: str) -> None:
        self._write("info", message)

    def warn(self, message: str) -> None:
        self._write("warn", message)

    def error(self, message: str) -> None:
        self._write("error", message)


log = _Log()

#: What ``variable`` answers under plain CPython (tests set it); in the
#: component, the pipeline's ``[function.variables]`` answer.
test_variables: dict[str, str] = {}


# Imported when the module is (the build's snapshot): in the component,
# nothing can be imported later, with no file system to read modules from.
try:
    from wit_world.imports import types as _wit_types  # type: ignore
except ImportError:
    try:  # built granted outbound HTTP: wasi:http has a `types` too
        from wit_world.imports import runnel_function_types as _wit_types  # type: ignore
    except ImportError:  # plain CPython
        _wit_types = None

try:
    from wit_world.imports import variables as _wit_variables  # type: ignore
except ImportError:  # plain CPython: tests, an editor
    _wit_variables = None


try:
    from wit_world.imports import kv as _wit_kv  # type: ignore
except ImportError:  # plain CPython
    _wit_kv = None


class KvError(Exception):
    """A key-value call failed: ``kind`` is ``not-granted``, ``too-large``,
    ``invalid`` or ``unavailable`` (the one worth retrying). Uncaught, it
    fails the event, retried when ``retryable``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"key-value store: {kind}: {message}")
        self.kind = kind
        self.retryable = kind == "unavailable"


class _Kv:
    """Key-value state that outlives an event, on the store the pipeline's
    ``[function.capabilities] kv`` grants (its keys the pipeline's own).
    A write is not undone when the event later fails: a retried event runs
    it again. Under plain CPython it is a dict, for tests."""

    def __init__(self) -> None:
        self.test_values: dict[str, bytes] = {}

    def _call(self, name: str, *args: Any) -> Any:
        if _wit_kv is None:
            return getattr(self, "_test_" + name)(*args)
        from componentize_py_types import Err  # type: ignore

        try:
            return getattr(_wit_kv, name)(*args)
        except Err as error:
            case = type(error.value).__name__.split("_", 1)[-1]
            kind = "".join("-" + c.lower() if c.isupper() else c for c in case).lstrip("-")
            raise KvError(kind, str(error.value.value)) from None

    def get(self, key: str) -> Optional[bytes]:
        return self._call("get", key)

    def set(self, key: str, value: Union[bytes, str], ttl_ms: Optional[int] = None) -> None:
        self._call("set", key, _bytes(value), ttl_ms)

    def delete(self, key: str) -> bool:
        return self._call("delete", key)

    def compare_and_swap(
        self, key: str, expected: Optional[Union[bytes, str]], value: Union[bytes, str], ttl_ms: Optional[int] = None
    ) -> bool:
        return self._call("compare_and_swap", key, None if expected is None else _bytes(expected), _bytes(value), ttl_ms)

    def increment(self, key: str, delta: int = 1) -> int:
        return self._call("increment", key, delta)

    # Plain CPython: a dict, without expiry.
    def _test_get(self, key: str) -> Optional[bytes]:
        return self.test_values.get(key)

    def _test_set(self, key: str, value: bytes, ttl_ms: Optional[int]) -> None:
        self.test_values[key] = value

    def _test_delete(self, key: str) -> bool:
        return self.test_values.pop(key, None) is not None

    def _test_compare_and_swap(self, key: str, expected: Optional[bytes], value: bytes, ttl_ms: Optional[int]) -> bool:
        if self.test_values.get(key) != expected:
            return False
        self.test_values[key] = value
        return True

    def _test_increment(self, key: str, delta: int) -> int:
        value = int(self.test_values.get(key, b"0")) + delta
        self.test_values[key] = str(value).encode()
        return value


try:
    from wit_world.imports import outgoing_handler as _wit_outgoing  # type: ignore
    from wit_world.imports import streams as _wit_streams  # type: ignore
    from wit_world.imports import wasi_http_types as _wit_http  # type: ignore
except ImportError:  # not granted outbound HTTP (built without it), or plain CPython
    _wit_outgoing = None


class HttpError(Exception):
    """An outbound request got no response: ``kind`` is ``denied`` (the
    pipeline does not allow the URL), ``unavailable`` (connecting or waiting
    failed or timed out: the one worth retrying), ``too-large`` (over
    ``http_max_response_size``) or ``invalid``. Uncaught, it fails the
    event, retried when ``retryable``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"outbound HTTP: {kind}: {message}")
        self.kind = kind
        self.retryable = kind == "unavailable"


@dataclass
class Response:
    """A response, its body read whole."""

    status: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> Optional[str]:
        """The first value of the header ``name`` (any case), as text."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value.decode("utf-8", "replace")
        return None

    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


# wasi:io allows this many bytes a blocking write.
_WRITE_CHUNK = 4096
# Error codes worth retrying: the destination may answer next time.
_TRANSIENT = {
    "DnsTimeout", "DnsError", "DestinationNotFound", "DestinationUnavailable",
    "ConnectionRefused", "ConnectionTerminated", "ConnectionTimeout",
    "ConnectionReadTimeout", "ConnectionWriteTimeout", "ConnectionLimitReached",
    "HttpResponseIncomplete", "HttpResponseTimeout", "InternalError",
}


class _Http:
    """Outbound HTTP to the URLs the pipeline's ``[function.capabilities]
    http`` allows. runnel adds the event's ``Idempotency-Key`` (``<key>:<n>``
    for the n-th request of an invocation) and ``traceparent``; redirects are
    not followed."""

    def __init__(self) -> None:
        #: Under plain CPython: ``f(method, url, headers, body) -> Response``.
        self.test_responder: Any = None

    def get(self, url: str, headers: Optional[dict[str, str]] = None) -> Response:
        return self.request("GET", url, headers)

    def post(self, url: str, body: Union[bytes, str], headers: Optional[dict[str, str]] = None) -> Response:
        return self.request("POST", url, headers, body)

    def request(
        self,
        method: str,
        url: str,
        headers: Optional[dict[str, str]] = None,
        body: Union[bytes, str, None] = None,
    ) -> Response:
        pairs = list((headers or {}).items())
        data = b"" if body is None else _bytes(body)
        if _wit_outgoing is None:
            if self.test_responder is None:
                raise HttpError(
                    "denied",
                    f"{url} is not allowed: this function was built without outbound HTTP "
                    "(grant it with [function.capabilities] http; in tests, set runnel.http.test_responder)",
                )
            return self.test_responder(method.upper(), url, pairs, data)
        return _send(method, url, pairs, data)


def _send(method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> Response:
    from componentize_py_types import Err, Ok  # type: ignore

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise HttpError("invalid", f"{url!r} is not an http:// or https:// URL")
    rest = rest.split("#", 1)[0]
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    authority, path = rest[:cut], rest[cut:]
    if not authority:
        raise HttpError("invalid", f"{url!r} names no host")
    if not path.startswith("/"):
        path = "/" + path
    try:
        fields = _wit_http.Fields.from_list([(name, value.encode("utf-8")) for name, value in headers])
    except Err as error:
        raise HttpError("invalid", f"{url}: headers: {type(error.value).__name__}") from None
    request = _wit_http.OutgoingRequest(fields)
    methods = {
        "GET": _wit_http.Method_Get, "HEAD": _wit_http.Method_Head, "POST": _wit_http.Method_Post,
        "PUT": _wit_http.Method_Put, "DELETE": _wit_http.Method_Delete,
        "OPTIONS": _wit_http.Method_Options, "PATCH": _wit_http.Method_Patch,
    }
    known = methods.get(method.upper())
    try:
        request.set_method(known() if known else _wit_http.Method_Other(method))
        request.set_scheme(_wit_http.Scheme_Https() if scheme.lower() == "https" else _wit_http.Scheme_Http())
        request.set_authority(authority)
        request.set_path_with_query(path)
    except Err:
        raise HttpError("invalid", f"{url}: not a valid request ({method} {path})") from None
    outgoing = request.body()
    try:
        pending = _wit_outgoing.handle(request, None)
    except Err as error:
        raise _error(url, error.value) from None
    # A body the host stopped taking (a refused request, a failed
    # connection) says less than the response's error: that one wins.
    unsent = None
    with outgoing.write() as stream:
        for at in range(0, len(body), _WRITE_CHUNK):
            try:
                stream.blocking_write_and_flush(body[at : at + _WRITE_CHUNK])
            except Err:
                unsent = HttpError("unavailable", f"{url}: the request body could not be sent")
                break
    try:
        _wit_http.OutgoingBody.finish(outgoing, None)
    except Err as error:
        unsent = unsent or _error(url, error.value)
    with pending:
        with pending.subscribe() as ready:
            ready.block()
        result = pending.get()
    if result is None or isinstance(result, Err):
        raise HttpError("invalid", f"{url}: the response was taken already")
    inner = result.value
    if isinstance(inner, Err):
        raise _error(url, inner.value)
    if unsent is not None:
        raise unsent
    with inner.value as response:
        status = response.status()
        with response.headers() as fields:
            pairs = [(name, bytes(value)) for name, value in fields.entries()]
        incoming = response.consume()
    chunks = []
    with incoming:
        with incoming.stream() as stream:
            while True:
                try:
                    chunks.append(stream.blocking_read(65536))
                except Err as error:
                    if isinstance(error.value, _wit_streams.StreamError_Closed):
                        break
                    code = _wit_http.http_error_code(error.value.value)
                    if code is None:
                        raise HttpError("unavailable", f"{url}: reading the response failed") from None
                    raise _error(url, code) from None
    return Response(status=status, headers=pairs, body=b"".join(chunks))


def _error(url: str, code: Any) -> HttpError:
    name = type(code).__name__.split("_", 1)[-1]
    if name == "HttpRequestDenied":
        return HttpError(
            "denied", f"{url} is not allowed: the pipeline's [function.capabilities] http lists no pattern matching it"
        )
    if name == "HttpResponseBodySize":
        return HttpError("too-large", f"{url}: the response body is larger than {code.value} bytes (http_max_response_size)")
    if name in ("HttpResponseTimeout", "ConnectionTimeout", "ConnectionReadTimeout"):
        return HttpError("unavailable", f"{url}: timed out (http_timeout, or the function's own timeout)")
    if name in _TRANSIENT:
        detail = getattr(code, "value", None)
        return HttpError("unavailable", f"{url}: {name}" + (f" ({detail})" if detail else ""))
    return HttpError("invalid", f"{url}: {name}")


http = _Http()


def _bytes(value: Union[bytes, str]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


kv = _Kv()

# Whether ``handle`` is running: variables are read then, not while the
# build imports the modules (its snapshot would keep the value).
_handling = False


def variable(name: str) -> Optional[str]:
    """The pipeline's ``[function.variables]`` value called ``name`` (a
    setting or a secret), or None when the pipeline sets no such variable.
    Read it inside ``handle``: at a module's top level it would run when
    the function is built."""
    if _wit_variables is None:
        return test_variables.get(name)
    if not _handling:
        raise RuntimeError(
            f"variable({name!r}) is read inside handle: at a module's top level it would run when the function is built"
        )
    return _wit_variables.get(name)


def _handle(handle: Any, ctx: Any, event: Any) -> list[Any]:
    """The glue runnel's build puts between the WIT export and ``handle``:
    the WIT records in, runnel's types to the function, outputs lowered."""
    from componentize_py_types import Err  # type: ignore

    types = _wit_types
    context = Context(
        pipeline=ctx.pipeline,
        config=dict(ctx.config),
        sinks={s.name: Sink(s.name, s.kind, s.target) for s in ctx.sinks},
        attempt=ctx.attempt,
    )
    received = Event(
        id=event.id,
        source=event.source,
        type=event.event_type,
        subject=event.subject,
        content_type=event.content_type,
        attributes=dict(event.attributes),
        data=bytes(event.data),
    )
    global _handling
    _handling = True
    try:
        outputs = handle(context, received)
        if outputs is None:
            outputs = []
        if isinstance(outputs, (Output, str, bytes, dict)) or not hasattr(outputs, "__iter__"):
            raise _Wrong(f"handle returned {type(outputs).__name__}, not a list of runnel.Output")
        return [_lower(i, output, types) for i, output in enumerate(outputs)]
    except Reject as error:
        raise Err(types.Error(message=str(error), retryable=False))
    except Retry as error:
        raise Err(types.Error(message=str(error), retryable=True))
    except (KvError, HttpError) as error:
        raise Err(types.Error(message=str(error), retryable=error.retryable))
    except _Wrong as error:
        raise Err(types.Error(message=str(error), retryable=False))
    except Exception:
        raise Err(types.Error(message=_traceback(), retryable=False))
    finally:
        _handling = False


class _Wrong(Exception):
    """An output the function returned that runnel cannot write."""


def _lower(i: int, output: Any, types: Any) -> Any:
    """One ``Output`` as the WIT record, every field checked."""
    if not isinstance(output, Output):
        raise _Wrong(f"handle returned {type(output).__name__} as output #{i}, not runnel.Output")

    def text(name: str) -> Optional[str]:
        value = getattr(output, name)
        if value is not None and not isinstance(value, str):
            raise _Wrong(f"output #{i}'s {name} is {type(value).__name__}, not a string")
        return value

    if not isinstance(output.sink, str):
        raise _Wrong(f"output #{i}'s sink is {type(output.sink).__name__}, not a string")
    if isinstance(output.data, str):
        data = output.data.encode("utf-8")
    elif isinstance(output.data, (bytes, bytearray, memoryview)):
        data = bytes(output.data)
    else:
        raise _Wrong(
            f"output #{i}'s data is {type(output.data).__name__}, not bytes or str (json.dumps a dict first)"
        )
    if not isinstance(output.attributes, dict):
        raise _Wrong(f"output #{i}'s attributes are {type(output.attributes).__name__}, not a dict")
    return types.Output(
        sink=output.sink,
        key=text("key"),
        content_type=text("content_type"),
        attributes=[(str(k), str(v)) for k, v in output.attributes.items()],
        data=data,
    )


def _traceback() -> str:
    """The exception being handled, as Python prints it, at most 4 KiB
    (its last lines, where the cause is)."""
    text = traceback.format_exc().strip()
    return text if len(text) <= 4096 else "...\n" + text[-4000:]
