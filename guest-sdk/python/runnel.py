"""Write Runnel event handlers in Python.

A plugin is a subclass of :class:`Plugin` exported as ``WitWorld``, the name
componentize-py looks for::

    import runnel
    from runnel import Event, Retry, emit_json, log

    class Enricher(runnel.Plugin):
        def handle(self, event: Event) -> None:
            order = event.json()                 # not JSON: Reject
            if order["sku"] == "OUT-OF-STOCK":
                raise Retry("no stock yet")      # try again later
            log.info(f"order {order['order_id']}")
            emit_json("order.enriched", order)   # no route: Retry

    WitWorld = runnel.export(Enricher)

Build it with ``componentize-py -d wit -w handler componentize -p <this dir>
app -o plugin.wasm`` (``scripts/build-guests.sh`` does it for every plugin in
``plugins/python``).

Everything here is a thin layer over the bindings componentize-py generates
from the WIT contract (``wit/``), the package ``wit_world``.
"""

from __future__ import annotations

import json as _json
import traceback as _traceback
from typing import Any, Iterable, List, Optional, Tuple, Type, Union

from componentize_py_types import Err
from wit_world.imports import atomics as _atomics
from wit_world.imports import batch as _batch
from wit_world.imports import host as _host
from wit_world.imports import wasi_config_store as _config_store
from wit_world.imports import wasi_keyvalue_store as _store
from wit_world.imports import runnel_plugin_types as _types
from wit_world.imports import outgoing_handler as _outgoing
from wit_world.imports import wasi_http_types as _http
from wit_world.imports import streams as _streams

__all__ = [
    "Plugin",
    "export",
    "Event",
    "Meta",
    "Failure",
    "Refusal",
    "Retry",
    "Reject",
    "emit",
    "emit_json",
    "emit_all",
    "to_json",
    "parse_json",
    "log",
    "kv",
    "KvError",
    "config",
    "http",
    "HttpError",
    "Response",
]


class Refusal(Exception):
    """Why ``handle`` did not succeed: raise (or return) :class:`Retry` or
    :class:`Reject`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = str(message)


class Retry(Refusal):
    """A transient failure: the host retries after the plugin's backoff,
    while attempts remain, then dead-letters the event."""


class Reject(Refusal):
    """A permanent failure: the host dead-letters the event now."""


class Meta:
    """Contextual information about an event, as on the wire."""

    __slots__ = ("created_at_utc", "correlation_id", "attempts", "is_dry_run")

    def __init__(self, meta: _types.Meta) -> None:
        #: RFC 3339 in UTC, e.g. ``2023-02-12T18:00:59.123456789Z``.
        self.created_at_utc: str = meta.created_at_utc
        #: Ties together every event caused by one request; ``""`` when none.
        self.correlation_id: str = meta.correlation_id
        #: How many times this event has been handed to a handler, counting
        #: this call: the first call sees 1.
        self.attempts: int = meta.attempts
        #: A dry run must have no side effects outside the event system.
        self.is_dry_run: bool = meta.is_dry_run

    def __repr__(self) -> str:
        return (
            f"Meta(created_at_utc={self.created_at_utc!r}, "
            f"correlation_id={self.correlation_id!r}, attempts={self.attempts}, "
            f"is_dry_run={self.is_dry_run})"
        )


class Event:
    """An event: ``id``, ``name``, ``meta`` and ``payload`` (bytes)."""

    __slots__ = ("id", "name", "meta", "payload")

    def __init__(self, event: _types.Event) -> None:
        self.id: str = event.id
        self.name: str = event.name
        self.meta: Meta = Meta(event.meta)
        self.payload: bytes = bytes(event.payload)

    def json(self) -> Any:
        """The payload decoded as JSON. A payload that is not JSON raises
        :class:`Reject` (it will never parse)."""
        try:
            return parse_json(self.payload)
        except ValueError as e:  # UnicodeDecodeError is a ValueError
            raise Reject(f"payload is not the expected JSON: {e}") from None

    def text(self) -> Optional[str]:
        """The payload as UTF-8 text, or ``None`` if it is not UTF-8."""
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def __repr__(self) -> str:
        return (
            f"Event(id={self.id!r}, name={self.name!r}, meta={self.meta!r}, "
            f"payload={self.payload!r})"
        )


_KIND_NAMES = {
    _types.FailureKind.HANDLER_ERROR: "handler-error",
    _types.FailureKind.REJECTED: "rejected",
    _types.FailureKind.TRAP: "trap",
    _types.FailureKind.TIMEOUT: "timeout",
    _types.FailureKind.DECODE: "decode",
}


class Failure:
    """A failed attempt, as told to ``handle_error``."""

    __slots__ = ("message", "kind", "attempt", "is_last_attempt")

    def __init__(self, failure: _types.Failure) -> None:
        #: Human-readable reason.
        self.message: str = failure.message
        #: ``"handler-error"`` (retry), ``"rejected"``, ``"trap"``,
        #: ``"timeout"`` or ``"decode"``: the WIT names.
        self.kind: str = _KIND_NAMES[failure.kind]
        #: The attempt that failed (1 for the first).
        self.attempt: int = failure.attempt
        #: True when the event is about to be dead-lettered.
        self.is_last_attempt: bool = failure.is_last_attempt

    def __repr__(self) -> str:
        return (
            f"Failure(kind={self.kind!r}, attempt={self.attempt}, "
            f"is_last_attempt={self.is_last_attempt}, message={self.message!r})"
        )


class Plugin:
    """An event handler. Override :meth:`handle`, and :meth:`handle_error` if
    you want to hear about failures.

    The host may run each call in a fresh instance (always after a trap, and
    every ``reuse_instance`` events), so keep nothing on ``self`` that must
    survive between events.
    """

    def handle(self, event: Event) -> Optional[Refusal]:
        """Handles one event. Return normally to acknowledge it; raise (or
        return) :class:`Retry` to try again later or :class:`Reject` to
        dead-letter it now. Any other exception is logged with its traceback
        and traps the call, like a panic in Rust."""
        raise NotImplementedError

    def handle_error(self, failure: Failure, event: Optional[Event]) -> None:
        """Told about each failed attempt; ``event`` is present only on the
        last one, when the host gives up. Does nothing by default."""


def _refusal(r: Refusal) -> Err:
    # A request the host refused stays refused: retrying cannot help.
    if isinstance(r, Reject) or (isinstance(r, HttpError) and r.kind == "denied"):
        return Err(_types.Refusal_Reject(r.message))
    return Err(_types.Refusal_Retry(r.message))


def _log_and_reraise(where: str) -> None:
    # WASI stderr is not granted by default, so a traceback printed by the
    # runtime would be lost: put it in the host's log before trapping.
    _host.log(_types.Level.ERROR, f"uncaught exception in {where}:\n{_traceback.format_exc()}")


def export(plugin: Type[Plugin]) -> type:
    """Wraps a :class:`Plugin` subclass into the ``WitWorld`` class that
    componentize-py exports: ``WitWorld = runnel.export(MyPlugin)``."""

    # One plugin object per component instance, however often componentize-py
    # creates WitWorld objects.
    instance: list = []

    class WitWorld:
        @property
        def _plugin(self) -> Plugin:
            if not instance:
                instance.append(plugin())
            return instance[0]

        def handle(self, event: _types.Event) -> None:
            _set_event_id(event.id)
            try:
                verdict = self._plugin.handle(Event(event))
            except Refusal as r:
                raise _refusal(r) from None
            except Exception:
                _log_and_reraise("handle")
                raise
            finally:
                _set_event_id("")
            if isinstance(verdict, Refusal):
                raise _refusal(verdict)

        def handle_error(self, failure: _types.Failure, event: Optional[_types.Event]) -> None:
            _set_event_id("" if event is None else event.id)
            try:
                self._plugin.handle_error(
                    Failure(failure), None if event is None else Event(event)
                )
            except Exception:
                _log_and_reraise("handle_error")
                raise
            finally:
                _set_event_id("")

    WitWorld.__name__ = WitWorld.__qualname__ = "WitWorld"
    return WitWorld


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: Union[bytes, str]) -> Any:
    """Strict JSON, as Rust's ``serde_json`` reads it: UTF-8, and no
    ``NaN`` / ``Infinity`` (which Python's ``json`` takes by default). Raises
    ``ValueError``."""
    if not isinstance(data, str):
        data = bytes(data).decode("utf-8")
    return _json.loads(data, parse_constant=_no_constant)


def _bytes(payload: Union[bytes, bytearray, memoryview, str]) -> bytes:
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return bytes(payload)


def emit_all(events: Iterable[Tuple[str, Union[bytes, str]]]) -> None:
    """Emits several ``(name, payload)`` events at once: all of them, or none
    if one cannot be published. They are published only if this call to
    ``handle`` succeeds. An error (no route for a name) raises :class:`Retry`."""
    batch = [_types.NewEvent(name, _bytes(payload)) for name, payload in events]
    try:
        _host.emit(batch)
    except Err as e:
        raise Retry(str(e.value)) from None


def emit(name: str, payload: Union[bytes, str] = b"") -> None:
    """Emits one event with raw bytes (or UTF-8 text) as its payload."""
    emit_all([(name, payload)])


def to_json(value: Any) -> bytes:
    """Compact JSON (no spaces, non-ASCII kept as UTF-8), as Rust's
    ``serde_json::to_vec`` writes it."""
    return _json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def emit_json(name: str, value: Any) -> None:
    """Emits one event with ``value`` serialised as its JSON payload. A value
    that cannot be encoded raises :class:`Reject`."""
    try:
        payload = to_json(value)
    except (TypeError, ValueError) as e:
        raise Reject(f"cannot encode {name}: {e}") from None
    emit(name, payload)


class _Log:
    """Lines in the host's log, tagged with the plugin and the event."""

    @staticmethod
    def trace(message: str) -> None:
        _host.log(_types.Level.TRACE, str(message))

    @staticmethod
    def debug(message: str) -> None:
        _host.log(_types.Level.DEBUG, str(message))

    @staticmethod
    def info(message: str) -> None:
        _host.log(_types.Level.INFO, str(message))

    @staticmethod
    def warn(message: str) -> None:
        _host.log(_types.Level.WARN, str(message))

    @staticmethod
    def error(message: str) -> None:
        _host.log(_types.Level.ERROR, str(message))


log = _Log()


class KvError(Retry):
    """A key-value operation failed: the bucket, and the host's reason.
    Raised out of ``handle`` it is a :class:`Retry`."""

    def __init__(self, bucket: str, reason: str) -> None:
        super().__init__(f"key-value bucket {_json.dumps(bucket)}: {reason}")
        self.bucket = bucket
        self.reason = reason


def _kv_error(bucket: str, e: Err) -> KvError:
    value = e.value
    if isinstance(value, _store.Error_AccessDenied):
        reason = f'not granted: add kv = ["{bucket}"] under the plugin\'s [plugin.grants]'
    elif isinstance(value, _store.Error_NoSuchStore):
        reason = "no such store"
    else:
        reason = str(getattr(value, "value", value))
    return KvError(bucket, reason)


class Bucket:
    """An open key-value bucket. Writes take effect only if this call to
    ``handle`` succeeds, together with its emitted events and the
    acknowledgement of the event; reads see the call's own writes."""

    def __init__(self, name: str, inner: _store.Bucket) -> None:
        self.name = name
        self._inner = inner

    def get(self, key: str) -> Optional[bytes]:
        """The value of ``key``, ``None`` when it is not set."""
        try:
            return self._inner.get(key)
        except Err as e:
            raise _kv_error(self.name, e) from None

    def set(self, key: str, value: Union[bytes, str]) -> None:
        """Sets ``key`` when the call succeeds (text is stored as UTF-8)."""
        try:
            self._inner.set(key, _bytes(value))
        except Err as e:
            raise _kv_error(self.name, e) from None

    def delete(self, key: str) -> None:
        """Removes ``key`` when the call succeeds."""
        try:
            self._inner.delete(key)
        except Err as e:
            raise _kv_error(self.name, e) from None

    def exists(self, key: str) -> bool:
        try:
            return self._inner.exists(key)
        except Err as e:
            raise _kv_error(self.name, e) from None

    def increment(self, key: str, delta: int = 1) -> int:
        """Adds ``delta`` to the integer at ``key`` (0 when not set) and
        returns the sum; stored as decimal text."""
        try:
            return _atomics.increment(self._inner, key, delta)
        except Err as e:
            raise _kv_error(self.name, e) from None

    def get_many(self, keys: List[str]) -> List[Optional[bytes]]:
        """The values of ``keys``, in order."""
        try:
            return [v for _, v in _batch.get_many(self._inner, list(keys))]
        except Err as e:
            raise _kv_error(self.name, e) from None

    def keys(self) -> List[str]:
        """Every key of the bucket."""
        out: List[str] = []
        cursor: Optional[str] = None
        while True:
            try:
                page = self._inner.list_keys(cursor)
            except Err as e:
                raise _kv_error(self.name, e) from None
            out.extend(page.keys)
            if page.cursor is None:
                return out
            cursor = page.cursor

    def get_json(self, key: str) -> Any:
        """The value of ``key`` decoded from JSON, ``None`` when not set."""
        raw = self.get(key)
        if raw is None:
            return None
        try:
            return parse_json(raw)
        except ValueError as e:
            raise KvError(self.name, f"value of key {key!r} is not JSON: {e}") from None

    def set_json(self, key: str, value: Any) -> None:
        """Sets ``key`` to ``value`` as JSON when the call succeeds."""
        self.set(key, to_json(value))


class _Kv:
    """Key-value state (``wasi:keyvalue``), committed exactly once with the
    event: ``runnel.kv.open("counts").increment("count:" + event.name)``."""

    @staticmethod
    def open(name: str) -> Bucket:
        """Opens a bucket the plugin's config grants (``kv = [...]``)."""
        try:
            return Bucket(name, _store.open(name))
        except Err as e:
            raise _kv_error(name, e) from None


kv = _Kv()


class _Config:
    """The plugin's configuration (``wasi:config/store``): its
    ``[plugin.config]`` table, plain values and secrets the host read from
    the environment or files when it loaded the plugin."""

    @staticmethod
    def get(key: str) -> Optional[str]:
        """The value of ``key``, ``None`` when the config does not set it."""
        try:
            return _config_store.get(key)
        except Err:
            return None

    @staticmethod
    def require(key: str) -> str:
        """The value of ``key``; raises :class:`Retry` naming the key when
        it is not set."""
        value = _Config.get(key)
        if value is None:
            raise Retry(f'config key "{key}" is not set: add it under the plugin\'s [plugin.config]')
        return value

    @staticmethod
    def all() -> List[Tuple[str, str]]:
        try:
            return list(_config_store.get_all())
        except Err:
            return []


config = _Config()


# The id of the event being handled ("" when none), and how many requests
# other than GET and HEAD this call has sent: their idempotency keys.
_event: List[Any] = ["", 0]


def _set_event_id(event_id: str) -> None:
    _event[0], _event[1] = event_id, 0


def _next_idempotency_key() -> Optional[str]:
    """The event id for a call's first request other than GET and HEAD, then
    ``<id>:2``, ``<id>:3``...: the same on every attempt that sends the same
    requests in the same order; ``None`` outside an event."""
    if not _event[0]:
        return None
    _event[1] += 1
    return _event[0] if _event[1] == 1 else f"{_event[0]}:{_event[1]}"

MAX_REDIRECTS = 5


class HttpError(Retry):
    """An HTTP request failed. ``kind`` is ``"denied"`` (the host refused
    it: not granted, or not GET/HEAD in a dry run; raised out of ``handle``
    it is a :class:`Reject`, since no retry would change that),
    ``"timeout"`` or ``"failed"`` (both a :class:`Retry`)."""

    def __init__(self, kind: str, message: str) -> None:
        prefix = {"denied": "HTTP request denied", "timeout": "HTTP request timed out"}
        super().__init__(f"{prefix.get(kind, 'HTTP request failed')}: {message}")
        self.kind = kind


class Response:
    """A whole response: ``status``, ``headers`` (lowercase names, as
    received) and ``body`` (bytes)."""

    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        """The first value of a header, by case-insensitive name."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return parse_json(self.body)
        except ValueError as e:
            raise HttpError("failed", f"response is not the expected JSON: {e}") from None

    def raise_for_status(self) -> "Response":
        """This response, or an :class:`HttpError` for a 4xx or 5xx status."""
        if 400 <= self.status <= 599:
            raise HttpError("failed", f"status {self.status}: {self.text()[:200]}")
        return self


def _http_error(url: str, code: Any) -> HttpError:
    if isinstance(code, _http.ErrorCode_HttpRequestDenied):
        return HttpError("denied", f"{url} (not granted by the plugin's grants.http, or not GET/HEAD in a dry run)")
    if isinstance(code, _http.ErrorCode_ConnectionLimitReached):
        return HttpError("denied", f"{url}: too many requests in one call (http_limits.max_requests_per_call)")
    timeouts = (
        _http.ErrorCode_ConnectionTimeout,
        _http.ErrorCode_ConnectionReadTimeout,
        _http.ErrorCode_ConnectionWriteTimeout,
        _http.ErrorCode_HttpResponseTimeout,
    )
    kind = "timeout" if isinstance(code, timeouts) else "failed"
    name = type(code).__name__.replace("ErrorCode_", "")
    detail = getattr(code, "value", None)
    return HttpError(kind, f"{url}: {name}" + ("" if detail is None else f" ({detail!r})"))


def _split_url(url: str) -> Tuple[str, str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest:
        raise HttpError("failed", f"{url!r} is not an absolute http(s) URL")
    rest = rest.split("#", 1)[0]
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    authority, path = rest[:cut], rest[cut:]
    if not path.startswith("/"):
        path = "/" + path
    return scheme.lower(), authority, path


def _resolve(base: str, location: str) -> str:
    """A redirect's Location resolved against ``base`` (absolute,
    ``//host/path``, ``/path``, ``?query``, ``relative/path``)."""
    scheme_part, sep, _ = location.partition("://")
    if sep and scheme_part and all(c.isalnum() or c in "+-." for c in scheme_part):
        return location
    scheme, authority, path = _split_url(base)
    if location.startswith("//"):
        return f"{scheme}:{location}"
    if location.startswith("/"):
        return f"{scheme}://{authority}{location}"
    path = path.split("?", 1)[0]
    if location.startswith("?"):
        return f"{scheme}://{authority}{path}{location}"
    directory = path.rsplit("/", 1)[0]
    return f"{scheme}://{authority}{directory}/{location}"


def _origin(url: str) -> str:
    scheme, authority, _ = _split_url(url)
    return f"{scheme}://{authority.lower()}"


_METHODS = {
    "GET": _http.Method_Get,
    "HEAD": _http.Method_Head,
    "POST": _http.Method_Post,
    "PUT": _http.Method_Put,
    "DELETE": _http.Method_Delete,
    "PATCH": _http.Method_Patch,
    "OPTIONS": _http.Method_Options,
}


def _send_once(method: str, url: str, headers: List[Tuple[str, str]], body: bytes, timeout_ns: Optional[int]) -> Response:
    scheme, authority, path = _split_url(url)
    try:
        fields = _http.Fields.from_list([(k, v.encode("utf-8")) for k, v in headers])
    except Err as e:
        raise HttpError("failed", f"{url}: invalid header: {e.value!r}") from None
    request = _http.OutgoingRequest(fields)
    kind = _METHODS.get(method)
    try:
        request.set_method(kind() if kind else _http.Method_Other(method))
        request.set_scheme(_http.Scheme_Https() if scheme == "https" else _http.Scheme_Http())
        request.set_authority(authority)
        request.set_path_with_query(path)
        outgoing = request.body()
    except Err:
        request.__exit__(None, None, None)
        raise HttpError("failed", f"{url}: invalid method, host or path") from None
    options = None
    if timeout_ns is not None:
        options = _http.RequestOptions()
        options.set_connect_timeout(timeout_ns)
        options.set_first_byte_timeout(timeout_ns)
        options.set_between_bytes_timeout(timeout_ns)
    try:
        pending = _outgoing.handle(request, options)
    except Err as e:
        outgoing.__exit__(None, None, None)
        raise _http_error(url, e.value) from None
    # The body goes out while the host sends the request; if the host
    # refused it, the stream is closed and the response says why.
    write_error: Optional[str] = None
    try:
        with outgoing.write() as stream:
            for i in range(0, len(body), 4096):
                stream.blocking_write_and_flush(body[i : i + 4096])
    except Err as e:
        write_error = repr(e.value)
    try:
        _http.OutgoingBody.finish(outgoing, None)
    except Err as e:
        write_error = write_error or repr(e.value)
    with pending:
        with pending.subscribe() as ready:
            ready.block()
        result = pending.get()
    if result is None or isinstance(result, Err):
        raise HttpError("failed", f"{url}: no response")
    inner = result.value
    if isinstance(inner, Err):
        raise _http_error(url, inner.value)
    with inner.value as response:
        if write_error is not None:
            raise HttpError("failed", f"{url}: sending the body: {write_error}")
        status = response.status()
        with response.headers() as fields:
            got = [(k, v.decode("utf-8", errors="replace")) for k, v in fields.entries()]
        incoming = response.consume()
        chunks: List[bytes] = []
        try:
            with incoming.stream() as stream:
                while True:
                    try:
                        chunks.append(stream.blocking_read(64 * 1024))
                    except Err as e:
                        if isinstance(e.value, _streams.StreamError_Closed):
                            break
                        code = _http.http_error_code(e.value.value)
                        if code is not None:
                            raise _http_error(url, code) from None
                        raise HttpError("failed", f"{url}: {e.value.value.to_debug_string()}") from None
        finally:
            _http.IncomingBody.finish(incoming).__exit__(None, None, None)
    return Response(status, got, b"".join(chunks))


class _Http:
    """Outbound HTTP (``wasi:http``), to the hosts the plugin's config grants
    (``http = ["https://api.example.com"]`` under ``[plugin.grants]``)::

        price = runnel.http.get(f"{base}/prices/{sku}").raise_for_status().json()

    Requests are effects outside the event system: a redelivered or retried
    event sends them again. So every request other than GET and HEAD
    carries an ``Idempotency-Key`` header unless the plugin sets its own:
    the event id for the call's first such request, then ``<id>:2``, ... In a dry run the host refuses
    all but GET and HEAD. Redirects are followed (up to 5), each hop
    granted or refused on its own. Every wait ends at the call's time limit."""

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Optional[List[Tuple[str, str]]] = None,
        body: Union[bytes, str, None] = None,
        json: Any = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Response:
        """Sends a request and reads the whole response; ``timeout`` in
        seconds bounds the connection and each part of the response."""
        method = method.upper()
        headers = list(headers or [])
        data = b"" if body is None else _bytes(body)
        if json is not None:
            data = to_json(json)
            headers.append(("content-type", "application/json"))
        names = {k.lower() for k, _ in headers}
        key = idempotency_key
        if key is None and method not in ("GET", "HEAD") and "idempotency-key" not in names:
            key = _next_idempotency_key()
        if key is not None and "idempotency-key" not in names:
            headers.append(("idempotency-key", key))
        timeout_ns = None if timeout is None else int(timeout * 1e9)
        for _ in range(MAX_REDIRECTS + 1):
            response = _send_once(method, url, headers, data, timeout_ns)
            location = response.header("location")
            if response.status not in (301, 302, 303, 307, 308) or location is None:
                return response
            next_url = _resolve(url, location)
            if _origin(next_url) != _origin(url):
                # Credentials are for the origin they were set for.
                headers = [(k, v) for k, v in headers if k.lower() not in ("authorization", "cookie", "proxy-authorization")]
            url = next_url
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, data = "GET", b""
                headers = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length")]
        raise HttpError("failed", f"{url}: more than {MAX_REDIRECTS} redirects")

    def get(self, url: str, **kw: Any) -> Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> Response:
        return self.request("PUT", url, **kw)

    def delete(self, url: str, **kw: Any) -> Response:
        return self.request("DELETE", url, **kw)


http = _Http()
