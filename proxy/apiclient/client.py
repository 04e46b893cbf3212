"""A small Kubernetes API client speaking raw JSON over persistent HTTP(S) connections.

Reads (:meth:`ApiClient.get_json`, :meth:`ApiClient.watch`), writes
(:meth:`ApiClient.request`: create, patch, delete, …) and raw calls
(:meth:`ApiClient.call`) to one API server, from this network namespace or — with a
:data:`~proxy.apiclient.transport.Connector` — from another one. Every failure is an
:class:`ApiError`; every retry loop waits with :class:`Backoff`.

Concurrency: :meth:`ApiClient.get_json` and :meth:`ApiClient.request` may be called from
any thread (they borrow a pooled connection). A :class:`ApiSession` is one connection for
one thread, whose :meth:`ApiSession.close` may be called from any other thread to
interrupt a blocked read — the reflector uses that to stop promptly.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import ssl
import threading
import urllib.parse
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

from proxy import __version__, documents
from proxy import apivalidation as av
from proxy.apiclient import transport
from proxy.apiclient.config import (
    SERVICEACCOUNT_DIR,
    ClientConfig,
    CredentialError,
    Credentials,
    ExecCredentialSource,
    credentials_for,
    load_config,
)
from proxy.apiclient.watch import EventDecoder, MalformedEvent
from proxy.config import ConfigError

log = logging.getLogger(__name__)

USER_AGENT = f"kube-proxy-py/{__version__}"
WATCH_READ_GRACE = 30.0
"""A watch read may block this long beyond the watch's own ``timeoutSeconds``."""
MAX_RESPONSE_BYTES = 1024 * 1024 * 1024
"""A list response (one page, or a whole list served from the watch cache) larger than this
is refused."""
_POOL_SIZE = 4
_READ_CHUNK = 64 * 1024
_RETRY_STALE = frozenset({"GET", "HEAD", "PUT", "DELETE"})
"""Methods sent again when a reused keep-alive connection turns out closed (not POST, not
PATCH: they might have been applied)."""


class ApiError(Exception):
    """An API request failed.

    ``status`` is the HTTP status (or the ``code`` of a watch ``ERROR`` event), ``None`` for
    connection problems (refused, reset, timeout, TLS, malformed stream). ``reason`` is the
    Status ``reason`` (``Expired``, ``Gone``, ``Forbidden``, …) or a short description;
    ``message`` the server's explanation (for 403 the RBAC denial); ``obj`` the decoded
    error body (a ``Status``) when there was one.
    """

    def __init__(
        self,
        status: int | None,
        reason: str,
        message: str = "",
        *,
        method: str = "GET",
        path: str = "",
        obj: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.method = method
        self.path = path
        self.obj = obj
        where = f"{method} {path}: " if path else ""
        code = f"HTTP {status} " if status is not None else ""
        detail = f": {message}" if message and message != reason else ""
        super().__init__(f"{where}{code}{reason}{detail}")

    @property
    def expired(self) -> bool:
        """410: the resourceVersion (or continue token) is too old; list again."""
        return self.status == 410 or self.reason in ("Expired", "Gone")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def resource_version_too_large(self) -> bool:
        """The server has not caught up with the resourceVersion asked for (504)."""
        return "too large resource version" in self.message.lower()

    @classmethod
    def from_status(
        cls, status: Mapping[str, Any], *, method: str = "GET", path: str = ""
    ) -> ApiError:
        """From a ``Status`` object (an error body, or a watch ``ERROR`` event's object)."""
        code = status.get("code")
        reason = status.get("reason") or status.get("status") or "Failure"
        message = status.get("message") or ""
        reason = reason[:200] if isinstance(reason, str) else av.show(reason)
        message = message[:2000] if isinstance(message, str) else av.show(message)
        return cls(
            code if isinstance(code, int) else None,
            reason,
            message,
            method=method,
            path=path,
            obj=status,
        )


class Backoff:
    """Exponential backoff: ``initial`` doubling up to ``maximum``, each wait drawn from
    [d/2, d] (``jitter=False``: exactly d, as the kubelet's CrashLoopBackOff); :meth:`reset`
    after a success."""

    def __init__(self, initial: float, maximum: float, *, jitter: bool = True) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {initial}, {maximum}")
        self._initial = initial
        self._max = maximum
        self._jitter = jitter
        self._steps = 0

    def next(self) -> float:
        """The next wait in seconds (grows with every call until :meth:`reset`)."""
        delay = min(self._max, self._initial * (2.0**self._steps))
        self._steps = min(self._steps + 1, 32)
        return random.uniform(delay / 2, delay) if self._jitter else delay

    def reset(self) -> None:
        self._steps = 0


def _error_from_response(status: int, body: bytes, method: str, path: str) -> ApiError:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, Mapping) and obj.get("kind") == "Status":
        err = ApiError.from_status(obj, method=method, path=path)
        if err.status is None or err.status != status:
            err = ApiError(status, err.reason, err.message, method=method, path=path, obj=obj)
        return err
    text = body.decode(errors="replace").strip()[:500]
    return ApiError(
        status, http.client.responses.get(status, "Error"), text, method=method, path=path
    )


_STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    http.client.BadStatusLine,
    ssl.SSLEOFError,
)
"""Errors that, on a reused keep-alive connection, mean the server had closed it."""


class ApiSession:
    """One persistent connection used by one thread; :meth:`close` works from any thread."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def get_json(
        self, path: str, params: Mapping[str, str] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """GET path and decode the JSON object; raise :class:`ApiError` on any failure."""
        status, body = self.call("GET", path, params=params, timeout=timeout)
        if status != 200:
            raise _error_from_response(status, body[:65536], "GET", path)
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError) as e:
            why = documents.value_problem(e)
            raise ApiError(None, "BadResponse", f"response is not JSON: {why}", path=path) from e
        if not isinstance(obj, dict):
            raise ApiError(None, "BadResponse", "response is not a JSON object", path=path)
        return obj

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> tuple[int, bytes]:
        """One request: (HTTP status, body) whatever the status; :class:`ApiError` when
        there is no answer (or it is larger than :data:`MAX_RESPONSE_BYTES`)."""
        resp, conn = self._request(method, path, params, timeout, body, content_type)
        try:
            data = resp.read(MAX_RESPONSE_BYTES + 1)
        except (OSError, http.client.HTTPException, ValueError) as e:
            self._drop(conn)
            raise self._conn_error(method, path, f"reading the response failed: {e}") from e
        if len(data) > MAX_RESPONSE_BYTES:
            self._drop(conn)
            raise ApiError(
                None,
                "BadResponse",
                f"response larger than {MAX_RESPONSE_BYTES} bytes",
                method=method,
                path=path,
            )
        if resp.will_close:
            self._drop(conn)
        return resp.status, data

    def watch(
        self,
        path: str,
        params: Mapping[str, str],
        timeout: float,
        idle_timeout: float | None = None,
    ) -> WatchStream:
        """Open a watch; iterate the returned stream for events as they arrive.

        ``timeoutSeconds`` defaults to ``timeout``; a read blocks at most ``timeout`` +
        :data:`WATCH_READ_GRACE` seconds, or ``idle_timeout`` when that is shorter: a
        stream silent for that long (no event, no bookmark) raises :class:`ApiError` with
        reason ``StreamIdle``. HTTP errors raise :class:`ApiError` here; ``ERROR`` events
        (e.g. code 410) are yielded like any other event.
        """
        query = {"watch": "true", "timeoutSeconds": str(max(1, int(timeout))), **params}
        read_timeout = timeout + WATCH_READ_GRACE
        if idle_timeout is not None:
            read_timeout = min(read_timeout, idle_timeout)
        resp, conn = self._request("GET", path, query, read_timeout)
        if resp.status != 200:
            try:
                body = resp.read(65536)
            except (OSError, http.client.HTTPException, ValueError):
                body = b""
            self._drop(conn)
            raise _error_from_response(resp.status, body, "GET", path)
        return WatchStream(self, conn, resp, path)

    def close(self) -> None:
        """Close the connection; a read blocked in another thread returns at once."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            transport.abort(conn)
        self._client._forget(self)

    # ---------------------------------------------------------------- internals

    def _conn_error(self, method: str, path: str, what: str) -> ApiError:
        if self._closed:
            return ApiError(None, "Closed", "the client was closed", method=method, path=path)
        return ApiError(
            None, "ConnectionError", f"{self._client.server}: {what}", method=method, path=path
        )

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise ApiError(None, "Closed", "the client was closed")
            if self._conn is not None:
                if not transport.closed_by_peer(self._conn):
                    return self._conn, True
                transport.abort(self._conn)  # the server closed it while it was idle
            self._conn = self._client._new_connection()
            return self._conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None
        transport.abort(conn)

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        read_timeout: float,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        url = self._client._url(path, params)
        for attempt in (1, 2):
            try:
                conn, reused = self._connection()
                headers = self._client._headers()
            except (CredentialError, ConfigError) as e:
                raise ApiError(None, "CredentialError", str(e), method=method, path=path) from e
            if body is not None:
                headers["Content-Type"] = content_type
            try:
                if conn.sock is None:
                    conn.timeout = min(transport.CONNECT_TIMEOUT, read_timeout)
                    conn.connect()
                    with self._lock:
                        if self._closed:
                            raise OSError("closed while connecting")
                assert conn.sock is not None
                conn.sock.settimeout(read_timeout)
                conn.request(method, url, body=body, headers=headers)
                resp = conn.getresponse()
            except _STALE as e:
                self._drop(conn)
                if reused and attempt == 1 and not self._closed and method in _RETRY_STALE:
                    log.debug("keep-alive connection was closed by the server; reconnecting")
                    continue
                raise self._conn_error(method, path, str(e) or type(e).__name__) from e
            except (OSError, http.client.HTTPException) as e:
                self._drop(conn)
                raise self._conn_error(method, path, str(e) or type(e).__name__) from e
            if resp.status == 401:
                self._client.tokens.invalidate()
            return resp, conn
        raise AssertionError("unreachable")  # pragma: no cover


class WatchStream(Iterator[dict[str, Any]]):
    """The events of one watch request, decoded one JSON line at a time.

    Ends (``StopIteration``) when the server closes the watch (``timeoutSeconds``) or
    :meth:`close` is called (from any thread); a broken connection or a malformed line
    raises :class:`ApiError` with ``status=None``.
    """

    def __init__(
        self,
        session: ApiSession,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        path: str,
    ) -> None:
        self._session = session
        self._conn = conn
        self._resp = resp
        self._path = path
        self._decoder = EventDecoder()
        self._done = False
        self._closed = False
        self.owns_session = False
        """Close the session with the stream (a watch opened by :meth:`ApiClient.watch`)."""

    def __iter__(self) -> WatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        while True:
            if self._done:
                raise StopIteration
            try:
                event = self._decoder.next_event()
            except MalformedEvent as e:
                self._fail(str(e), e.__cause__)
            if event is not None:
                return event
            try:
                chunk = self._resp.read1(_READ_CHUNK)
            except (OSError, http.client.HTTPException, ValueError, AttributeError) as e:
                if self._closed or self._session.closed:
                    self._finish(reusable=False)
                    raise StopIteration from None
                if isinstance(e, TimeoutError):
                    self._fail("no data on the watch (no event, no bookmark)", e, "StreamIdle")
                self._fail(f"watch stream broken: {e or type(e).__name__}", e)
            if chunk:
                self._decoder.feed(chunk)
                continue
            # End of stream: the server closed the watch.
            if self._closed or self._session.closed:
                self._finish(reusable=False)
                raise StopIteration
            self._finish(reusable=not self._resp.will_close)
            try:
                event = self._decoder.finish()
            except MalformedEvent as e:
                raise ApiError(None, "StreamError", str(e), path=self._path) from e.__cause__
            if event is not None:
                return event
            raise StopIteration

    def close(self) -> None:
        """Stop the stream; safe from any thread (interrupts a blocked read)."""
        self._closed = True
        if not self._done:
            self._session._drop(self._conn)
        if self.owns_session:
            self._session.close()

    def _finish(self, *, reusable: bool) -> None:
        self._done = True
        if not reusable:
            self._session._drop(self._conn)
        if self.owns_session:
            self._session.close()

    def _fail(
        self, message: str, cause: BaseException | None = None, reason: str = "StreamError"
    ) -> NoReturn:
        self._finish(reusable=False)
        raise ApiError(None, reason, message, path=self._path) from cause


class ApiClient:
    """Raw-JSON access to one API server; see the module docstring.

    ``connector`` makes every connection's socket (default: from this namespace; the lab
    passes one that connects from inside the control plane's namespace).
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        user_agent: str = USER_AGENT,
        connector: transport.Connector = transport.direct_connect,
    ) -> None:
        self.config = config
        self.server = config.server
        parts = urllib.parse.urlsplit(config.server)
        self._prefix = parts.path.rstrip("/")
        self._ssl = transport.build_ssl_context(config)
        self._connector = connector
        self.tokens: Credentials = credentials_for(config)
        self._exec_generation = 0
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._idle: list[ApiSession] = []
        self._sessions: weakref.WeakSet[ApiSession] = weakref.WeakSet()
        self._closed = False

    @classmethod
    def from_config(
        cls,
        kubeconfig: str | None = None,
        master: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        serviceaccount_dir: str | os.PathLike[str] = SERVICEACCOUNT_DIR,
    ) -> ApiClient:
        """kubeconfig (+ master override), master alone, or the in-cluster config."""
        config = load_config(kubeconfig, master, env=env, serviceaccount_dir=serviceaccount_dir)
        client = cls(config)
        log.info(
            "API client configured",
            extra={
                "server": config.server,
                "source": config.source,
                "auth": ",".join(
                    a
                    for a, on in (
                        ("exec", config.exec_plugin is not None),
                        ("token-file", config.token_file is not None),
                        ("token", config.token is not None and config.token_file is None),
                        ("client-cert", config.client_cert_pem is not None),
                    )
                    if on
                )
                or "none",
            },
        )
        return client

    def session(self) -> ApiSession:
        """A dedicated connection (for one thread) that can be closed from another."""
        with self._lock:
            if self._closed:
                raise ApiError(None, "Closed", "the client was closed")
            s = ApiSession(self)
            self._sessions.add(s)
            return s

    def get_json(
        self, path: str, params: Mapping[str, str] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """GET ``path`` (thread-safe, pooled keep-alive connections)."""
        session = self._borrow()
        try:
            return session.get_json(path, params, timeout)
        finally:
            self._give_back(session)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> tuple[int, bytes]:
        """One request (thread-safe): (HTTP status, body) whatever the status."""
        session = self._borrow()
        try:
            return session.call(
                method, path, body, params=params, content_type=content_type, timeout=timeout
            )
        finally:
            self._give_back(session)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
        ok: tuple[int, ...] = (),
    ) -> Any:
        """Create, patch, delete, get…: ``body`` sent as JSON, the reply decoded (None if
        empty); :class:`ApiError` for a status ≥ 400 not in ``ok``."""
        data = None if body is None else json.dumps(body).encode()
        status, raw = self.call(
            method, path, data, params=params, content_type=content_type, timeout=timeout
        )
        if status >= 400 and status not in ok:
            raise _error_from_response(status, raw[:65536], method, path)
        try:
            return json.loads(raw) if raw.strip() else None
        except (ValueError, RecursionError) as e:
            why = documents.value_problem(e)
            raise ApiError(
                None, "BadResponse", f"response is not JSON: {why}", method=method, path=path
            ) from e

    def watch(self, path: str, params: Mapping[str, str], timeout: float) -> WatchStream:
        """Open a watch on its own connection; ``close()`` the stream (or this client)."""
        session = self.session()
        try:
            stream = session.watch(path, params, timeout)
        except BaseException:
            session.close()
            raise
        stream.owns_session = True
        return stream

    def close(self) -> None:
        """Close every connection, interrupting requests blocked in other threads."""
        with self._lock:
            self._closed = True
            sessions = list(self._sessions)
            self._idle.clear()
        for s in sessions:
            s.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _borrow(self) -> ApiSession:
        with self._lock:
            session = self._idle.pop() if self._idle else None
        return session if session is not None else self.session()

    def _give_back(self, session: ApiSession) -> None:
        with self._lock:
            if not self._closed and not session.closed and len(self._idle) < _POOL_SIZE:
                self._idle.append(session)
                return
        session.close()

    def _forget(self, session: ApiSession) -> None:
        with self._lock:
            self._sessions.discard(session)
            if session in self._idle:
                self._idle.remove(session)

    def _tls(self) -> ssl.SSLContext | None:
        """The TLS context; rebuilt when an exec plugin handed out a new client cert."""
        source = self.tokens
        if self._ssl is None or not isinstance(source, ExecCredentialSource):
            return self._ssl
        cred = source.credential()
        if cred.client_cert_pem is None or cred.client_key_pem is None:
            return self._ssl
        if self._exec_generation != source.generation:
            self._ssl = transport.build_ssl_context(
                self.config, (cred.client_cert_pem, cred.client_key_pem)
            )
            self._exec_generation = source.generation
        return self._ssl

    def _new_connection(self) -> http.client.HTTPConnection:
        return transport.new_connection(self.config, self._tls(), connector=self._connector)

    def _url(self, path: str, params: Mapping[str, str] | None) -> str:
        if not path.startswith("/"):
            path = "/" + path
        url = self._prefix + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return url

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": self._user_agent, "Accept": "application/json"}
        token = self.tokens.get()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers
