"""Where the API server is and who we are: kubeconfig, in-cluster config, credentials.

What is supported, as client-go does it:

- kubeconfig (``current-context``): ``server`` (with an optional path prefix),
  ``certificate-authority`` / ``-data``, ``insecure-skip-tls-verify``, ``tls-server-name``,
  ``client-certificate`` / ``-data`` + ``client-key`` / ``-data``, ``token``,
  ``tokenFile`` (re-read every minute; it wins over ``token``), and ``exec`` credential
  plugins (``client.authentication.k8s.io/v1`` and ``v1beta1``: the plugin's token or
  client certificate is used until its ``expirationTimestamp``, and the plugin runs again
  after a 401). Relative file paths are relative to the kubeconfig's directory, and so is
  an ``exec.command`` containing a ``/``. ``auth-provider``, basic auth and ``proxy-url``
  are refused with an error naming the field.
- ``master`` overrides the server URL (kube-proxy's ``--master``).
- Neither: in-cluster config (``KUBERNETES_SERVICE_HOST``/``_PORT``, the service account's
  ``token`` and ``ca.crt``); the token file is re-read every minute because bound service
  account tokens rotate (kubelet refreshes the file well before expiry).

Why not the ``kubernetes`` package's loader: it imports the whole generated client
(measured: +0.3 s and +19 MiB max RSS over importing this package), writes embedded
certificates to temporary files that outlive the call, and reports problems without
naming the file and field. Parsing a kubeconfig is a few dozen lines of PyYAML; this
module does that, with errors such as
``/etc/kpp/kubeconfig: users[admin].user.client-key-data: not valid base64``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import logging
import os
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy import apivalidation as av
from proxy import documents
from proxy.config import ConfigError

log = logging.getLogger(__name__)

SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REFRESH_SECONDS = 60.0
"""client-go's cached token file source re-reads the file once a minute."""
MAX_KUBECONFIG_BYTES = 16 * 1024 * 1024
EXEC_TIMEOUT = 60.0
"""An exec credential plugin that has not answered after this long is killed."""
MAX_EXEC_OUTPUT_BYTES = 1024 * 1024
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")


class CredentialError(Exception):
    """Credentials could not be obtained now (an exec plugin failed); retried later."""


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
    exec_plugin: ExecPlugin | None = None


@dataclass(frozen=True)
class ExecPlugin:
    """A kubeconfig ``users[].user.exec`` credential plugin."""

    command: str
    where: str
    """The kubeconfig field, for messages: ``/path: users[me].user.exec``."""
    api_version: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    install_hint: str = ""
    cluster: Mapping[str, Any] | None = field(default=None, repr=False)
    """``spec.cluster`` for the plugin when ``provideClusterInfo`` is set."""


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value.encode(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ConfigError(f"{where}: not valid base64 ({e})") from e


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be sent as ``Authorization: Bearer <token>``, or None.

    A bearer token is printable ASCII without spaces (RFC 6750's ``b64token`` and every
    token Kubernetes issues); anything else would make an invalid or different header.
    The message shows the first offending character by code point, never the token.
    """
    for i, c in enumerate(token):
        if not "!" <= c <= "~":
            name = "a byte order mark" if c == "\ufeff" else f"U+{ord(c):04X}"
            return (
                f"character {i + 1} is {name}; a bearer token is printable ASCII "
                "without spaces (was the file saved with an editor's BOM or line breaks?)"
            )
    return None


def _checked_token(token: str | None, where: str) -> str | None:
    if token is not None and (problem := token_problem(token)) is not None:
        raise ConfigError(f"{where}: not a usable bearer token: {problem}")
    return token


def _decoded_token(raw: bytes) -> str:
    """A token file's text, trimmed as client-go trims it; bytes that are not UTF-8 become
    U+FFFD, which :func:`token_problem` then names."""
    return raw.decode("utf-8", "replace").strip()


def _read_file(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:  # a NUL byte in the path: no file can have that name
        raise ConfigError(f"{where}: {str(path)!r} is not a usable file name ({e})") from e


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
    for unsupported in ("auth-provider", "username", "password"):
        if user.get(unsupported):
            raise ConfigError(
                f"{uwhere}.{unsupported}: not supported by kube-proxy-py; use a token, "
                "tokenFile, a client certificate or an exec plugin"
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
    token = _checked_token(_str_field(user, "token", uwhere), f"{uwhere}.token")
    token_file: str | None = None
    if (tf := _str_field(user, "tokenFile", uwhere)) is not None:
        token_file = str(resolve(tf))
        _checked_token(
            _decoded_token(_read_file(Path(token_file), f"{uwhere}.tokenFile")),
            f"{uwhere}.tokenFile ({token_file})",
        )

    exec_plugin: ExecPlugin | None = None
    if user.get("exec"):
        exec_plugin = _exec_plugin(user["exec"], f"{uwhere}.exec", base, cluster)

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
        exec_plugin=exec_plugin,
    )


def _exec_plugin(section: Any, where: str, base: Path, cluster: Mapping[str, Any]) -> ExecPlugin:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    api_version = _str_field(section, "apiVersion", where)
    if api_version not in EXEC_API_VERSIONS:
        raise ConfigError(
            f"{where}.apiVersion: {av.show(api_version)} is not one of "
            f"{', '.join(EXEC_API_VERSIONS)}"
        )
    command = _str_field(section, "command", where)
    if command is None:
        raise ConfigError(f"{where}.command: missing")
    if "/" in command and not command.startswith("/"):
        command = str(base / command)
    args = section.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{where}.args: expected a list of strings")
    env: list[tuple[str, str]] = []
    raw_env = section.get("env") or []
    if not isinstance(raw_env, list):
        raise ConfigError(f"{where}.env: expected a list of name/value entries")
    for i, entry in enumerate(raw_env):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        value = entry.get("value") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise ConfigError(f"{where}.env[{i}].name: expected a variable name")
        if not isinstance(value, str) or "\0" in value:
            raise ConfigError(f"{where}.env[{i}].value: expected a string")
        env.append((name, value))
    if "\0" in command or any("\0" in a for a in args):
        raise ConfigError(f"{where}: command and args must not contain NUL")
    hint = section.get("installHint") or ""
    if not isinstance(hint, str):
        raise ConfigError(f"{where}.installHint: expected a string")
    provide = section.get("provideClusterInfo", False)
    if not isinstance(provide, bool):
        raise ConfigError(f"{where}.provideClusterInfo: expected true or false")
    info: dict[str, Any] | None = None
    if provide:
        info = {
            k: cluster[k]
            for k in (
                "server",
                "tls-server-name",
                "insecure-skip-tls-verify",
                "certificate-authority-data",
            )
            if k in cluster
        }
    return ExecPlugin(
        command=command,
        where=where,
        api_version=api_version,
        args=tuple(args),
        env=tuple(env),
        install_hint=hint,
        cluster=info,
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
    token = _decoded_token(_read_file(token_file, "in-cluster config: service account token"))
    if not token:
        raise ConfigError(f"in-cluster config: service account token: {token_file} is empty")
    _checked_token(token, f"in-cluster config: service account token ({token_file})")
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
            text = _decoded_token(Path(self._file).read_bytes())
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
        elif (problem := token_problem(text)) is not None:
            log.warning(
                "bearer token file holds no usable token; keeping the last token",
                extra={"file": self._file, "error": problem},
            )
        elif text != self._token:
            if self._token is not None:
                log.info(
                    "bearer token file changed; using the new token", extra={"file": self._file}
                )
            self._token = text
        self._read_at = now


@dataclass(frozen=True)
class ExecCredential:
    """What an exec plugin returned: a token and/or a client certificate, until ``expiry``."""

    token: str | None
    client_cert_pem: bytes | None = field(default=None, repr=False)
    client_key_pem: bytes | None = field(default=None, repr=False)
    expiry: float | None = None
    """Wall-clock time (``time.time()``) after which the plugin runs again; None: never."""


class ExecCredentialSource:
    """Runs a kubeconfig ``exec`` plugin when a credential is needed, as client-go does.

    The credential is cached until its ``expirationTimestamp`` (wall clock) or until
    :meth:`invalidate` (the client calls it after a 401); the next :meth:`get` runs the
    plugin again. A failing plugin raises :class:`CredentialError` naming the kubeconfig
    field, the command and its stderr. ``generation`` counts the credentials obtained, so a
    client can tell when a client certificate changed.
    """

    def __init__(
        self,
        plugin: ExecPlugin,
        *,
        timeout: float = EXEC_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._plugin = plugin
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._current: ExecCredential | None = None
        self.generation = 0

    def get(self) -> str | None:
        """The bearer token to send (None when the plugin gave a client certificate only)."""
        return self.credential().token

    def credential(self) -> ExecCredential:
        with self._lock:
            cred = self._current
            if cred is None or (cred.expiry is not None and self._clock() >= cred.expiry):
                cred = self._run()
                self._current = cred
                self.generation += 1
            return cred

    def invalidate(self) -> None:
        """Run the plugin again for the next request (after a 401)."""
        with self._lock:
            self._current = None

    def _run(self) -> ExecCredential:
        p = self._plugin
        what = f"{p.where}: {p.command}"
        spec: dict[str, Any] = {"interactive": False}
        if p.cluster is not None:
            spec["cluster"] = dict(p.cluster)
        info = {"apiVersion": p.api_version, "kind": "ExecCredential", "spec": spec}
        env = {**os.environ, **dict(p.env), "KUBERNETES_EXEC_INFO": json.dumps(info)}
        try:
            proc = subprocess.run(
                [p.command, *p.args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self._timeout,
                check=False,
            )
        except FileNotFoundError as e:
            hint = f"; {p.install_hint.strip()}" if p.install_hint.strip() else ""
            raise CredentialError(f"{what}: not found ({e.strerror}){hint}") from e
        except subprocess.TimeoutExpired as e:
            raise CredentialError(f"{what}: no answer within {self._timeout:g}s") from e
        except OSError as e:
            raise CredentialError(f"{what}: cannot run: {e.strerror or e}") from e
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-1000:]
            raise CredentialError(f"{what}: exit code {proc.returncode}: {err}")
        if len(proc.stdout) > MAX_EXEC_OUTPUT_BYTES:
            raise CredentialError(f"{what}: output larger than {MAX_EXEC_OUTPUT_BYTES} bytes")
        try:
            out = json.loads(proc.stdout)
        except (ValueError, RecursionError) as e:
            why = documents.value_problem(e)
            raise CredentialError(f"{what}: output is not an ExecCredential: {why}") from e
        return _exec_credential(out, what, p.api_version)


def _exec_credential(out: Any, what: str, api_version: str) -> ExecCredential:
    if not isinstance(out, Mapping) or out.get("kind") != "ExecCredential":
        raise CredentialError(f"{what}: output is not an ExecCredential")
    if out.get("apiVersion") != api_version:
        raise CredentialError(
            f"{what}: output has apiVersion {av.show(out.get('apiVersion'))}, "
            f"expected {api_version}"
        )
    status = out.get("status")
    if not isinstance(status, Mapping):
        raise CredentialError(f"{what}: output has no status")
    token = status.get("token") or None
    cert = status.get("clientCertificateData") or None
    key = status.get("clientKeyData") or None
    if token is not None and not isinstance(token, str):
        raise CredentialError(f"{what}: status.token: expected a string")
    if any(c is not None and not isinstance(c, str) for c in (cert, key)):
        raise CredentialError(f"{what}: status.clientCertificateData/clientKeyData: not PEM")
    if (cert is None) != (key is None):
        raise CredentialError(
            f"{what}: status: clientCertificateData and clientKeyData go together"
        )
    if token is None and cert is None:
        raise CredentialError(f"{what}: status has neither token nor clientCertificateData")
    if token is not None and (problem := token_problem(token)) is not None:
        raise CredentialError(f"{what}: status.token: not a usable bearer token: {problem}")
    expiry: float | None = None
    stamp = status.get("expirationTimestamp")
    if stamp is not None:
        try:
            when = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError("no time zone")
        except ValueError as e:
            raise CredentialError(
                f"{what}: status.expirationTimestamp: {av.show(stamp)} is not RFC 3339 ({e})"
            ) from e
        expiry = when.timestamp()
    return ExecCredential(
        token=token,
        client_cert_pem=cert.encode() if isinstance(cert, str) else None,
        client_key_pem=key.encode() if isinstance(key, str) else None,
        expiry=expiry,
    )


Credentials = TokenSource | ExecCredentialSource
"""Where a client's bearer token (and, from an exec plugin, client certificate) comes from."""


def credentials_for(config: ClientConfig) -> Credentials:
    """The credential source ``config`` describes (an exec plugin, a token file, a token)."""
    if config.exec_plugin is not None:
        return ExecCredentialSource(config.exec_plugin)
    return TokenSource(token=config.token, token_file=config.token_file)
