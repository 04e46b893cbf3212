"""A small Kubernetes API client speaking raw JSON over persistent HTTP(S) connections.

Why not the generated ``kubernetes`` client: its model objects cost far too much memory at
10k Services, and even its kubeconfig loader imports the whole generated client (+24 MB
RSS, +0.5 s), writes embedded certificates to temporary files that outlive the call, and
reports problems without naming the file and field. Parsing a kubeconfig is a few dozen
lines of PyYAML; this module does that, with errors such as
``/etc/kpp/kubeconfig: users[admin].user.client-key-data: not valid base64``.

What is supported, as client-go does it:

- kubeconfig (``current-context``): ``server`` (with an optional path prefix),
  ``certificate-authority`` / ``-data``, ``insecure-skip-tls-verify``, ``tls-server-name``,
  ``client-certificate`` / ``-data`` + ``client-key`` / ``-data``, ``token``,
  ``tokenFile`` (re-read every minute; it wins over ``token``). Relative file paths are
  relative to the kubeconfig's directory. ``exec``, ``auth-provider``, basic auth and
  ``proxy-url`` are refused with an error naming the field.
- ``master`` overrides the server URL (kube-proxy's ``--master``).
- Neither: in-cluster config (``KUBERNETES_SERVICE_HOST``/``_PORT``, the service account's
  ``token`` and ``ca.crt``); the token file is re-read every minute because bound service
  account tokens rotate (kubelet refreshes the file well before expiry).

Concurrency: :meth:`ApiClient.get_json` may be called from any thread (it borrows a
pooled connection). A :class:`ApiSession` is one connection for one thread, whose
:meth:`ApiSession.close` may be called from any other thread to interrupt a blocked read —
the reflector uses that to stop promptly.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from proxy import __version__, documents
from proxy import apivalidation as av

log = logging.getLogger(__name__)

USER_AGENT = f"kube-proxy-py/{__version__}"
SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REFRESH_SECONDS = 60.0
"""client-go's cached token file source re-reads the file once a minute."""
CONNECT_TIMEOUT = 10.0
"""TCP connect + TLS handshake bound for every request."""
WATCH_READ_GRACE = 30.0
"""A watch read may block this long beyond the watch's own ``timeoutSeconds``."""
MAX_EVENT_BYTES = 16 * 1024 * 1024
"""A watch event line longer than this is treated as a broken stream (an object is at most
etcd's 1.5 MiB request limit, a few MiB as JSON)."""
MAX_RESPONSE_BYTES = 1024 * 1024 * 1024
"""A list response (one page, or a whole list served from the watch cache) larger than this
is refused."""
MAX_KUBECONFIG_BYTES = 16 * 1024 * 1024
_POOL_SIZE = 4
_READ_CHUNK = 64 * 1024


class ConfigError(ValueError):
    """The client configuration is unusable; the message names the file and the field."""


class ApiError(Exception):
    """An API request failed.

    ``status`` is the HTTP status (or the ``code`` of a watch ``ERROR`` event), ``None`` for
    connection problems (refused, reset, timeout, TLS, malformed stream). ``reason`` is the
    Status ``reason`` (``Expired``, ``Gone``, ``Forbidden``, …) or a short description;
    ``message`` the server's explanation (for 403 the RBAC denial).
    """

    def __init__(
        self,
        status: int | None,
        reason: str,
        message: str = "",
        *,
        method: str = "GET",
        path: str = "",
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.method = method
        self.path = path
        where = f"{method} {path}: " if path else ""
        code = f"HTTP {status} " if status is not None else ""
        detail = f": {message}" if message and message != reason else ""
        super().__init__(f"{where}{code}{reason}{detail}")

    @property
    def expired(self) -> bool:
        """410: the resourceVersion (or continue token) is too old; list again."""
        return self.status == 410 or self.reason in ("Expired", "Gone")

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
            code if isinstance(code, int) else None, reason, message, method=method, path=path
        )


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ClientConfig:
    """Where the API server is and how to authenticate, as loaded from a kubeconfig."""

    server: str
    source: str
    """Where this came from, for messages: ``kubeconfig /path (context ctx)``, ``in-cluster``."""
    ca_pem: bytes | None = field(default=None, repr=False)
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    client_cert_pem: bytes | None = field(default=None, repr=False)
    client_key_pem: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value.encode(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ConfigError(f"{where}: not valid base64 ({e})") from e


def _read_file(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror or e}") from e


def _str_field(section: Mapping[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a string, got {type(value).__name__}")
    return value


def _named(doc: Mapping[str, Any], list_key: str, item_key: str, name: str, file: str) -> Any:
    """``doc[list_key]`` entry named ``name``, returning its ``item_key`` mapping."""
    entries = doc.get(list_key) or []
    if not isinstance(entries, list):
        raise ConfigError(f"{file}: {list_key}: expected a list")
    for i, entry in enumerate(entries):
        if isinstance(entry, Mapping) and entry.get("name") == name:
            body = entry.get(item_key) or {}
            if not isinstance(body, Mapping):
                raise ConfigError(f"{file}: {list_key}[{i}].{item_key}: expected a mapping")
            return body
    return None


_HOST_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_URL_PATH = re.compile(r"[A-Za-z0-9._~/%-]*")


def _check_server(server: str, where: str) -> str:
    """An ``http(s)://host[:port][/prefix]`` URL whose every part http.client will take:
    a host name or IP address, a port, a plain path (no spaces, controls or queries)."""
    bad = ConfigError(f"{where}: {av.show(server)} is not an http(s)://host[:port] URL")
    if not server.isascii() or any(c <= " " or c == "\x7f" for c in server):
        raise bad
    try:
        parts = urllib.parse.urlsplit(server)
        host = parts.hostname or ""
    except ValueError:  # "Invalid IPv6 URL"
        raise bad from None
    if parts.scheme not in ("http", "https") or not host or parts.query or parts.fragment:
        raise bad
    if parts.username is not None or not _URL_PATH.fullmatch(parts.path):
        raise bad
    if ":" in host or host.replace(".", "").isdigit():
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise bad from None
    elif not _HOST_NAME.fullmatch(host):
        raise bad
    try:
        _ = parts.port
    except ValueError as e:
        raise ConfigError(f"{where}: {av.show(server)}: bad port ({e})") from e
    return server.rstrip("/")


def _default_scheme(master: str, tls: bool) -> str:
    if "://" in master:
        return master
    return ("https://" if tls else "http://") + master


def load_kubeconfig(path: str | os.PathLike[str], master: str | None = None) -> ClientConfig:
    """Parse ``path`` for its ``current-context``; ``master`` replaces the server URL."""
    file = str(path)
    base = Path(file).resolve().parent
    raw = _read_file(Path(file), f"{file}: kubeconfig")
    try:
        if len(raw) > MAX_KUBECONFIG_BYTES:
            raise documents.DocumentError(f"{file}: larger than 16 MiB; is it a kubeconfig?")
        docs = documents.load_yaml_all(documents.decode(raw, file), file)
    except documents.DocumentError as e:
        raise ConfigError(str(e)) from None
    doc = docs[0] if len(docs) == 1 else docs
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{file}: expected a kubeconfig (a mapping with clusters, users, …)")

    context_name = doc.get("current-context")
    if not context_name or not isinstance(context_name, str):
        raise ConfigError(f"{file}: current-context: not set; name the context to use")
    context = _named(doc, "contexts", "context", context_name, file)
    if context is None:
        raise ConfigError(
            f"{file}: contexts: no context named {context_name!r} (from current-context)"
        )
    cluster_name = _str_field(context, "cluster", f"{file}: contexts[{context_name}].context")
    if cluster_name is None:
        raise ConfigError(f"{file}: contexts[{context_name}].context.cluster: missing")
    cluster = _named(doc, "clusters", "cluster", cluster_name, file)
    if cluster is None:
        raise ConfigError(
            f"{file}: clusters: no cluster named {cluster_name!r} "
            f"(used by context {context_name!r})"
        )
    cwhere = f"{file}: clusters[{cluster_name}].cluster"

    user: Mapping[str, Any] = {}
    user_name = _str_field(context, "user", f"{file}: contexts[{context_name}].context")
    uwhere = f"{file}: users[{user_name}].user"
    if user_name is not None:
        found = _named(doc, "users", "user", user_name, file)
        if found is None:
            raise ConfigError(
                f"{file}: users: no user named {user_name!r} (used by context {context_name!r})"
            )
        user = found

    def resolve(p: str) -> Path:
        try:
            expanded = Path(p).expanduser()
        except RuntimeError as e:  # ~nosuchuser/…
            raise ConfigError(f"{file}: {av.show(p)}: {e}") from None
        return expanded if expanded.is_absolute() else base / expanded

    # Cluster: server, trust.
    if cluster.get("proxy-url"):
        raise ConfigError(f"{cwhere}.proxy-url: HTTP proxies are not supported")
    ca_pem: bytes | None = None
    ca_data = cluster.get("certificate-authority-data")
    ca_file = _str_field(cluster, "certificate-authority", cwhere)
    if ca_data:
        ca_pem = _b64(ca_data, f"{cwhere}.certificate-authority-data")
    elif ca_file is not None:
        ca_pem = _read_file(resolve(ca_file), f"{cwhere}.certificate-authority")
    insecure = cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise ConfigError(f"{cwhere}.insecure-skip-tls-verify: expected true or false")
    if insecure and ca_pem is not None:
        raise ConfigError(
            f"{cwhere}: certificate-authority and insecure-skip-tls-verify are both set; "
            "keep one (client-go refuses this too)"
        )
    tls_server_name = _str_field(cluster, "tls-server-name", cwhere)

    # User: credentials.
    for unsupported in ("exec", "auth-provider", "username", "password"):
        if user.get(unsupported):
            raise ConfigError(
                f"{uwhere}.{unsupported}: not supported by kube-proxy-py; use a token, "
                "tokenFile or a client certificate"
            )
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    if user.get("client-certificate-data"):
        cert_pem = _b64(user["client-certificate-data"], f"{uwhere}.client-certificate-data")
    elif (cert_file := _str_field(user, "client-certificate", uwhere)) is not None:
        cert_pem = _read_file(resolve(cert_file), f"{uwhere}.client-certificate")
    if user.get("client-key-data"):
        key_pem = _b64(user["client-key-data"], f"{uwhere}.client-key-data")
    elif (key_file := _str_field(user, "client-key", uwhere)) is not None:
        key_pem = _read_file(resolve(key_file), f"{uwhere}.client-key")
    if (cert_pem is None) != (key_pem is None):
        have, missing = (
            ("client-certificate", "client-key")
            if key_pem is None
            else ("client-key", "client-certificate")
        )
        raise ConfigError(f"{uwhere}: {have} given without {missing}(-data)")
    token = _str_field(user, "token", uwhere)
    token_file: str | None = None
    if (tf := _str_field(user, "tokenFile", uwhere)) is not None:
        token_file = str(resolve(tf))
        _read_file(Path(token_file), f"{uwhere}.tokenFile")

    tls = ca_pem is not None or cert_pem is not None or insecure
    if master:
        server = _check_server(_default_scheme(master, tls), "master")
    else:
        server_field = _str_field(cluster, "server", cwhere)
        if server_field is None:
            raise ConfigError(f"{cwhere}.server: missing (or pass --master)")
        server = _check_server(server_field, f"{cwhere}.server")
    return ClientConfig(
        server=server,
        source=f"kubeconfig {file} (context {context_name})",
        ca_pem=ca_pem,
        insecure_skip_tls_verify=insecure,
        tls_server_name=tls_server_name,
        client_cert_pem=cert_pem,
        client_key_pem=key_pem,
        token=token,
        token_file=token_file,
    )


def load_in_cluster(
    env: Mapping[str, str] | None = None,
    serviceaccount_dir: str | os.PathLike[str] = SERVICEACCOUNT_DIR,
) -> ClientConfig:
    """The pod's service account: ``KUBERNETES_SERVICE_HOST/PORT``, ``token``, ``ca.crt``."""
    env = os.environ if env is None else env
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    port = env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        missing = [
            n
            for n, v in (("KUBERNETES_SERVICE_HOST", host), ("KUBERNETES_SERVICE_PORT", port))
            if not v
        ]
        raise ConfigError(
            f"in-cluster config: environment variable {' and '.join(missing)} not set "
            "(not running in a pod?); pass --kubeconfig or --master"
        )
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    sa = Path(serviceaccount_dir)
    token_file = sa / "token"
    token = _read_file(token_file, "in-cluster config: service account token").decode().strip()
    if not token:
        raise ConfigError(f"in-cluster config: service account token: {token_file} is empty")
    ca_pem = _read_file(sa / "ca.crt", "in-cluster config: service account CA")
    server = _check_server(
        f"https://{host}:{port}", "in-cluster config: KUBERNETES_SERVICE_HOST/PORT"
    )
    return ClientConfig(
        server=server,
        source=f"in-cluster ({sa})",
        ca_pem=ca_pem,
        token_file=str(token_file),
    )


def load_config(
    kubeconfig: str | os.PathLike[str] | None = None,
    master: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    serviceaccount_dir: str | os.PathLike[str] = SERVICEACCOUNT_DIR,
) -> ClientConfig:
    """kube-proxy's rule: a kubeconfig and/or master, else the in-cluster config."""
    if kubeconfig:
        return load_kubeconfig(kubeconfig, master)
    if master:
        # As kube-proxy: --master alone means no credentials (e.g. an insecure local port).
        return ClientConfig(
            server=_check_server(_default_scheme(master, False), "master"), source="--master"
        )
    return load_in_cluster(env, serviceaccount_dir)


class TokenSource:
    """A bearer token: fixed, or read from a file and re-read every ``refresh_seconds``.

    A failed re-read keeps the last good token (and logs a warning), as client-go does.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        token_file: str | None = None,
        refresh_seconds: float = TOKEN_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = token
        self._file = token_file
        self._refresh = refresh_seconds
        self._clock = clock
        self._read_at: float | None = None
        self._lock = threading.Lock()

    @property
    def file(self) -> str | None:
        return self._file

    def get(self) -> str | None:
        if self._file is None:
            return self._token
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._refresh:
                self._reload(now)
            return self._token

    def invalidate(self) -> None:
        """Re-read the file on the next request (after a 401)."""
        with self._lock:
            self._read_at = None

    def _reload(self, now: float) -> None:
        assert self._file is not None
        try:
            text = Path(self._file).read_text().strip()
        except OSError as e:
            log.warning(
                "cannot re-read the bearer token file; keeping the last token",
                extra={"file": self._file, "error": e.strerror or str(e)},
            )
            self._read_at = now
            return
        if not text:
            log.warning(
                "bearer token file is empty; keeping the last token", extra={"file": self._file}
            )
        elif text != self._token:
            if self._token is not None:
                log.info(
                    "bearer token file changed; using the new token", extra={"file": self._file}
                )
            self._token = text
        self._read_at = now


def _load_cert_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes, where: str) -> None:
    """ssl wants files: use an anonymous memory file (memfd), else a 0600 temp file."""
    data = cert_pem.rstrip(b"\n") + b"\n" + key_pem
    fd: int | None = None
    path: str | None = None
    try:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("kpp-client-cert", os.MFD_CLOEXEC)
            os.write(fd, data)
            path = f"/proc/self/fd/{fd}"
        else:  # pragma: no cover - not Linux
            handle, path = tempfile.mkstemp(prefix="kpp-client-cert-")
            os.write(handle, data)
            os.close(handle)
        ctx.load_cert_chain(path)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{where}: client certificate/key do not load: {e}") from e
    finally:
        if fd is not None:
            os.close(fd)
        elif path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


def build_ssl_context(config: ClientConfig) -> ssl.SSLContext | None:
    """The TLS context for ``config`` (``None`` for an http:// server)."""
    if urllib.parse.urlsplit(config.server).scheme != "https":
        return None
    if config.insecure_skip_tls_verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif config.ca_pem is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_verify_locations(cadata=config.ca_pem.decode("ascii", errors="replace"))
        except (ssl.SSLError, ValueError, TypeError) as e:
            raise ConfigError(
                f"{config.source}: certificate authority: not a PEM certificate ({e})"
            ) from e
    else:
        ctx = ssl.create_default_context()
    if config.client_cert_pem is not None and config.client_key_pem is not None:
        _load_cert_chain(ctx, config.client_cert_pem, config.client_key_pem, config.source)
    return ctx


# --------------------------------------------------------------------------- transport


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS with a separate TLS server name (kubeconfig ``tls-server-name``)."""

    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        context: ssl.SSLContext,
        server_hostname: str,
        timeout: float,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._kpp_context = context
        self._kpp_server_hostname = server_hostname

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        _tune(sock)
        try:
            self.sock = self._kpp_context.wrap_socket(
                sock, server_hostname=self._kpp_server_hostname
            )
        except BaseException:
            sock.close()
            raise


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        if self.sock is not None:
            _tune(self.sock)


def _tune(sock: socket.socket) -> None:
    """No Nagle; TCP keepalive so a dead peer under a long watch is noticed."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def _error_from_response(status: int, body: bytes, method: str, path: str) -> ApiError:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, Mapping) and obj.get("kind") == "Status":
        err = ApiError.from_status(obj, method=method, path=path)
        if err.status is None or err.status != status:
            err = ApiError(status, err.reason, err.message, method=method, path=path)
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
        resp, conn = self._request(path, params, timeout)
        try:
            body = resp.read(MAX_RESPONSE_BYTES + 1)
        except (OSError, http.client.HTTPException, ValueError) as e:
            self._drop(conn)
            raise self._conn_error(path, f"reading the response failed: {e}") from e
        if len(body) > MAX_RESPONSE_BYTES:
            self._drop(conn)
            raise ApiError(
                None, "BadResponse", f"response larger than {MAX_RESPONSE_BYTES} bytes", path=path
            )
        if resp.will_close:
            self._drop(conn)
        if resp.status != 200:
            raise _error_from_response(resp.status, body[:65536], "GET", path)
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError) as e:
            why = documents.value_problem(e)
            raise ApiError(None, "BadResponse", f"response is not JSON: {why}", path=path) from e
        if not isinstance(obj, dict):
            raise ApiError(None, "BadResponse", "response is not a JSON object", path=path)
        return obj

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
        resp, conn = self._request(path, query, read_timeout)
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
            _abort(conn)
        self._client._forget(self)

    # ---------------------------------------------------------------- internals

    def _conn_error(self, path: str, what: str) -> ApiError:
        if self._closed:
            return ApiError(None, "Closed", "the client was closed", path=path)
        return ApiError(None, "ConnectionError", f"{self._client.server}: {what}", path=path)

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise ApiError(None, "Closed", "the client was closed")
            if self._conn is not None:
                return self._conn, True
            self._conn = self._client._new_connection()
            return self._conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None
        _abort(conn)

    def _request(
        self, path: str, params: Mapping[str, str] | None, read_timeout: float
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        url = self._client._url(path, params)
        for attempt in (1, 2):
            conn, reused = self._connection()
            headers = self._client._headers()
            try:
                if conn.sock is None:
                    conn.timeout = min(CONNECT_TIMEOUT, read_timeout)
                    conn.connect()
                    with self._lock:
                        if self._closed:
                            raise OSError("closed while connecting")
                assert conn.sock is not None
                conn.sock.settimeout(read_timeout)
                conn.request("GET", url, headers=headers)
                resp = conn.getresponse()
            except _STALE as e:
                self._drop(conn)
                if reused and attempt == 1 and not self._closed:
                    log.debug("keep-alive connection was closed by the server; reconnecting")
                    continue
                raise self._conn_error(path, str(e) or type(e).__name__) from e
            except (OSError, http.client.HTTPException) as e:
                self._drop(conn)
                raise self._conn_error(path, str(e) or type(e).__name__) from e
            if resp.status == 401:
                self._client.tokens.invalidate()
            return resp, conn
        raise AssertionError("unreachable")  # pragma: no cover


def _abort(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        conn.close()


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
        self._buf = bytearray()
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
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                if line.strip():
                    return self._decode(line)
                continue
            if len(self._buf) > MAX_EVENT_BYTES:
                self._fail(f"watch event larger than {MAX_EVENT_BYTES} bytes")
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
                self._buf += chunk
                continue
            # End of stream: the server closed the watch.
            if self._closed or self._session.closed:
                self._finish(reusable=False)
                raise StopIteration
            tail = bytes(self._buf).strip()
            self._buf.clear()
            self._finish(reusable=not self._resp.will_close)
            if tail:
                return self._decode(tail)
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

    def _decode(self, line: bytes) -> dict[str, Any]:
        try:
            event = json.loads(line)
        except (ValueError, RecursionError) as e:
            self._fail(f"watch event is not JSON: {documents.value_problem(e)}", e)
        if (
            not isinstance(event, dict)
            or not isinstance(event.get("type"), str)
            or not isinstance(event.get("object"), dict)
        ):
            self._fail(f"watch event lacks type/object: {line[:200]!r}")
        return event


class ApiClient:
    """Raw-JSON access to one API server; see the module docstring."""

    def __init__(self, config: ClientConfig, *, user_agent: str = USER_AGENT) -> None:
        self.config = config
        self.server = config.server
        parts = urllib.parse.urlsplit(config.server)
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._ssl = build_ssl_context(config)
        self._server_hostname = config.tls_server_name or self._host
        self.tokens = TokenSource(token=config.token, token_file=config.token_file)
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
        with self._lock:
            session = self._idle.pop() if self._idle else None
        if session is None:
            session = self.session()
        try:
            return session.get_json(path, params, timeout)
        finally:
            with self._lock:
                if not self._closed and not session.closed and len(self._idle) < _POOL_SIZE:
                    self._idle.append(session)
                    session = None
            if session is not None:
                session.close()

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

    # ---------------------------------------------------------------- internals

    def _forget(self, session: ApiSession) -> None:
        with self._lock:
            self._sessions.discard(session)
            if session in self._idle:
                self._idle.remove(session)

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._ssl is not None:
            return _HTTPSConnection(
                self._host,
                self._port,
                context=self._ssl,
                server_hostname=self._server_hostname,
                timeout=CONNECT_TIMEOUT,
            )
        return _HTTPConnection(self._host, self._port, timeout=CONNECT_TIMEOUT)

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
