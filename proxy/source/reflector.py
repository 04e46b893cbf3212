"""List+watch reflector over raw JSON: client-go's reflector semantics, in our own words.

One :class:`Reflector` keeps one resource (with its selectors) in step with the API
server and hands every change to ``on_event(type, object)`` from its own daemon thread:

1. **List.** The first list asks for ``resourceVersion=0`` (served from the API server's
   watch cache, cheap for the server, at least as fresh as anything we saw) with
   ``limit=500``; a watch cache ignores the limit for RV 0, an API server without one pages
   (``continue``), and then later lists page too. A relist after a watch expired asks for
   the last resourceVersion seen without a limit (again servable from the cache, never
   older than what was delivered); if the server answers 410 or "too large resource
   version", the next list asks for ``resourceVersion=""`` (a consistent read), paged.
   Items are delivered page by page as they arrive. Against what was delivered before
   (``key → resourceVersion``, objects are not kept), a list yields ADDED for new keys,
   MODIFIED for a changed resourceVersion, nothing for unchanged objects, and — after the
   last page — DELETED for keys that are gone, so deletions made while we were
   disconnected are seen. Such a DELETED carries a stub object (kind, apiVersion,
   metadata name/namespace/resourceVersion): the last state was not kept.
2. **Synced.** After the first complete list ``has_synced`` turns true and ``on_synced``
   is called, once. Relists do not call it again: their differences arrive as ordinary
   events, so the consumer's state stays right without a second signal.
3. **Watch** from the list's resourceVersion with ``allowWatchBookmarks=true`` and
   ``timeoutSeconds`` drawn from [watch_timeout, 2 × watch_timeout) so that many agents'
   watches do not end together. BOOKMARK events only advance the resourceVersion. A watch
   that ends (timeout) or breaks is reopened from the last resourceVersion — at once if it
   carried events, after a backoff step if it carried none.
4. **Errors.** 410 Expired/Gone (HTTP status or an ERROR event) → relist at once.
   Connection errors, 429 and 5xx → retry with jittered exponential backoff
   (``backoff_initial`` doubling up to ``backoff_max``, each wait drawn from [d/2, d]),
   reset by a successful list or a watch that delivered events. 401/403 are logged as
   errors with the server's message (RBAC) and retried with the same backoff. Nothing
   stops the reflector but :meth:`Reflector.stop`.

Objects lose ``metadata.managedFields`` and the ``kubectl.kubernetes.io/last-applied-
configuration`` annotation before delivery; list items get ``kind``/``apiVersion`` (list
responses omit them). ``on_event`` runs in the reflector's thread; its exceptions are
logged and the reflector carries on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
from collections.abc import Callable
from typing import Any, Literal

from proxy import apivalidation as av
from proxy.apiclient.client import ApiClient, ApiError, ApiSession, Backoff
from proxy.model import HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL

log = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
OnEvent = Callable[[EventType, dict[str, Any]], None]
_EVENT_TYPES: dict[str, EventType] = {
    "ADDED": "ADDED",
    "MODIFIED": "MODIFIED",
    "DELETED": "DELETED",
}

LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
PAGE_SIZE = 500
"""client-go's pager default."""
LIST_TIMEOUT = 60.0
"""Per-read bound on a list request (the API server's own default request timeout)."""
IDLE_TIMEOUT_ENV = "KUBE_PROXY_PY_WATCH_IDLE_TIMEOUT"
DEFAULT_IDLE_TIMEOUT = 150.0
"""The API server sends a bookmark about every minute on a watch that asked for them
(while its resourceVersion moves; measured on v1.37.2 with nothing changing: the first one
after 120 s, then every 60 s), so a watch without a byte for 150 s is taken as dead and
reopened from the last resourceVersion (a cheap request, nothing lost). HTTP/2 clients
ping instead; this client speaks HTTP/1.1, where TCP keepalive sees a dead peer but not a
hung one."""


def default_idle_timeout() -> float:
    """:data:`DEFAULT_IDLE_TIMEOUT`, or seconds from ``$KUBE_PROXY_PY_WATCH_IDLE_TIMEOUT``."""
    text = os.environ.get(IDLE_TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_IDLE_TIMEOUT
    except ValueError:
        value = DEFAULT_IDLE_TIMEOUT
    return value if 1.0 <= value <= 3600.0 else DEFAULT_IDLE_TIMEOUT


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    """What to list and watch: a collection path and the selectors sent with it."""

    kind: str
    path: str
    label_selector: str = ""
    field_selector: str = ""

    @property
    def api_version(self) -> str:
        """``v1`` for ``/api/v1/…``, ``group/version`` for ``/apis/group/version/…``."""
        parts = self.path.strip("/").split("/")
        if parts[0] == "api" and len(parts) > 1:
            return parts[1]
        if parts[0] == "apis" and len(parts) > 2:
            return f"{parts[1]}/{parts[2]}"
        raise ValueError(f"{self.path!r} is not an /api/v1/… or /apis/group/version/… path")

    def selectors(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        return params

    def __str__(self) -> str:
        sel = ",".join(f"{k}={v}" for k, v in self.selectors().items())
        return f"{self.kind} {self.path}" + (f" ({sel})" if sel else "")


def services_spec() -> ResourceSpec:
    """Services as upstream kube-proxy (v1.37 cmd/kube-proxy/app/server.go) watches them.

    No ``service.kubernetes.io/service-proxy-name`` label (another proxy owns those), and
    ``spec.clusterIP!=None`` (headless Services are left to DNS).
    """
    return ResourceSpec(
        kind="Service",
        path="/api/v1/services",
        label_selector=f"!{SERVICE_PROXY_NAME_LABEL}",
        field_selector="spec.clusterIP!=None",
    )


def endpointslices_spec() -> ResourceSpec:
    """EndpointSlices as upstream kube-proxy watches them: not ``service.kubernetes.io/headless``.

    The EndpointSlice controller sets that label on the slices of a Service without a
    cluster IP. Upstream does not filter slices by ``service-proxy-name``: such slices
    arrive but have no Service to join.
    """
    return ResourceSpec(
        kind="EndpointSlice",
        path="/apis/discovery.k8s.io/v1/endpointslices",
        label_selector=f"!{HEADLESS_LABEL}",
    )


def node_spec(node_name: str) -> ResourceSpec:
    """This node only (``metadata.name=NODE``), as upstream's NodeManager informer."""
    if not node_name or "," in node_name or "=" in node_name:
        raise ValueError(f"node name {node_name!r} cannot be used in a field selector")
    return ResourceSpec(
        kind="Node", path="/api/v1/nodes", field_selector=f"metadata.name={node_name}"
    )


def object_key(obj: dict[str, Any]) -> str:
    """``namespace/name``, or ``name`` for a cluster-scoped object ("" when malformed)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ""
    name, ns = meta.get("name"), meta.get("namespace") or ""
    if not isinstance(name, str) or not name or not isinstance(ns, str):
        return ""
    return f"{ns}/{name}" if ns else name


def malformed(obj: Any) -> str | None:
    """Why an item or event object cannot even be keyed (a list item with ``"metadata":
    "oops"``), or None. Such an object is skipped and reported; everything else in the
    list or stream goes on."""
    if not isinstance(obj, dict):
        return f"expected an object, got {av.show(obj)}"
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return f"metadata: expected an object, got {av.show(meta)}"
    if not object_key(obj):
        return f"metadata.name/namespace: not usable ({av.show(meta.get('name'))})"
    rv = meta.get("resourceVersion")
    if rv is not None and not isinstance(rv, str):
        return f"metadata.resourceVersion: {av.show(rv)} is not a string"
    return None


def strip_object(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop what kube-proxy never reads and costs memory (in place; returns obj)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        annotations = meta.get("annotations")
        if isinstance(annotations, dict) and LAST_APPLIED_ANNOTATION in annotations:
            del annotations[LAST_APPLIED_ANNOTATION]
            if not annotations:
                del meta["annotations"]
    return obj


@dataclasses.dataclass(frozen=True)
class ReflectorStats:
    """Counters since start (for metrics, logs and tests)."""

    lists: int = 0
    """Complete lists (the first one and every relist)."""
    watches: int = 0
    """Watch requests the server accepted (HTTP 200)."""
    events: int = 0
    """Events delivered to on_event."""
    bookmarks: int = 0
    errors: int = 0
    """Failed requests and ERROR events, of any kind."""
    malformed: int = 0
    """List items and watch events skipped because they could not even be keyed."""
    silent: int = 0
    """Watches reopened because nothing (no event, no bookmark) came for the idle timeout."""


class _Stop(Exception):
    """stop() was called while a request ran."""


class Reflector:
    """Lists then watches one resource; see the module docstring for the semantics."""

    def __init__(
        self,
        client: ApiClient,
        spec: ResourceSpec,
        on_event: OnEvent,
        *,
        on_synced: Callable[[], None] | None = None,
        watch_timeout: float = 300.0,
        watch_idle_timeout: float | None = None,
        backoff_initial: float = 0.8,
        backoff_max: float = 30.0,
        name: str | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """``watch_idle_timeout``: reopen a watch that delivered nothing (no event, no
        bookmark) for this long (default :func:`default_idle_timeout`). ``on_error(reason)``
        is told of every failed request or event, by cause: ``connection``, ``bad-response``,
        ``http-<code>``, ``expired``, ``silent``, ``malformed``, ``unexpected``."""
        if watch_timeout < 1:
            raise ValueError(f"watch_timeout must be at least 1 second, got {watch_timeout}")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError(
                f"need 0 < backoff_initial <= backoff_max, got {backoff_initial}, {backoff_max}"
            )
        self._client = client
        self._spec = spec
        self._api_version = spec.api_version
        self._on_event = on_event
        self._on_synced = on_synced
        self._watch_timeout = watch_timeout
        self._idle_timeout = (
            default_idle_timeout() if watch_idle_timeout is None else watch_idle_timeout
        )
        self._on_error = on_error
        self._backoff = Backoff(backoff_initial, backoff_max)
        self.name = name or spec.kind
        self._known: dict[str, str] = {}
        """key → resourceVersion of everything delivered and not deleted."""
        self._last_rv = ""
        self._rv_unavailable = False
        self._paginated = False
        self._need_list = True
        self._synced = False
        self._stopping = threading.Event()
        self._session: ApiSession | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stats = ReflectorStats()

    # ------------------------------------------------------------------ public

    @property
    def spec(self) -> ResourceSpec:
        return self._spec

    @property
    def has_synced(self) -> bool:
        """True once the first full list has been delivered."""
        return self._synced

    @property
    def last_resource_version(self) -> str:
        return self._last_rv

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> ReflectorStats:
        return self._stats

    @property
    def known_objects(self) -> int:
        """How many objects are currently delivered and not deleted."""
        return len(self._known)

    def start(self) -> None:
        """Start listing and watching in a daemon thread."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"reflector {self.name} was already started")
            if self._stopping.is_set():
                raise RuntimeError(f"reflector {self.name} was stopped; create a new one")
            self._session = self._client.session()
            self._thread = threading.Thread(
                target=self._run, name=f"reflector-{self.name}", daemon=True
            )
            self._thread.start()
        log.info("reflector started", extra=self._extra(resource=str(self._spec)))

    def request_stop(self) -> None:
        """Tell the thread to stop and interrupt a blocked list or watch (closes its
        connection); returns at once (:meth:`stop` also waits)."""
        self._stopping.set()
        with self._lock:
            session = self._session
        if session is not None:
            session.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, interrupting a blocked list or watch (closes its connection)."""
        self.request_stop()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("reflector did not stop in time", extra=self._extra(timeout=timeout))
                return
        log.info("reflector stopped", extra=self._extra())

    # ------------------------------------------------------------------ loop

    def _extra(self, **fields: Any) -> dict[str, Any]:
        return {"reflector": self.name, "kind": self._spec.kind, **fields}

    def _report(self, reason: str) -> None:
        if self._on_error is not None:
            try:
                self._on_error(reason)
            except Exception:
                log.exception("on_error handler failed", extra=self._extra())

    def _count(self, **increments: int) -> None:
        s = self._stats
        self._stats = dataclasses.replace(
            s, **{k: getattr(s, k) + v for k, v in increments.items()}
        )

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self._session is not None:
                self._session.close()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            phase = "list" if self._need_list else "watch"
            try:
                if self._need_list:
                    self._list()
                    self._need_list = False
                    self._backoff.reset()
                else:
                    self._watch()
            except _Stop:
                break
            except ApiError as e:
                if self._stopping.is_set():
                    break
                self._handle_error(phase, e)
            except Exception:
                if self._stopping.is_set():
                    break
                self._count(errors=1)
                self._report("unexpected")
                delay = self._backoff.next()
                log.exception(
                    "reflector failed unexpectedly; retrying",
                    extra=self._extra(phase=phase, retry_in=f"{delay:.1f}s"),
                )
                self._stopping.wait(delay)

    def _handle_error(self, phase: str, e: ApiError) -> None:
        self._count(errors=1)
        if e.reason == "StreamIdle":
            # TCP still open, nothing arriving: a hung server or a middlebox holding the
            # connection. Reopen from the last resourceVersion at once: nothing is lost.
            self._count(silent=1)
            self._report("silent")
            log.warning(
                "watch silent (no event, no bookmark); reopening it",
                extra=self._extra(idle_seconds=self._idle_timeout, resource_version=self._last_rv),
            )
            return
        if e.expired or e.resource_version_too_large:
            self._report("expired")
        elif e.reason in ("BadResponse", "StreamError"):
            self._report("bad-response")
        elif e.status is None:
            self._report("connection")
        else:
            self._report(f"http-{e.status}")
        extra = self._extra(
            phase=phase,
            status=e.status if e.status is not None else "none",
            reason=e.reason,
            resource_version=self._last_rv,
        )
        if e.expired or e.resource_version_too_large:
            if phase == "list":
                # Even the list's resourceVersion is unavailable: ask for the newest data.
                # Already doing so (e.g. a huge list outlived its continue token): pause.
                again = self._rv_unavailable
                self._rv_unavailable = True
                delay = self._backoff.next() if again else 0.0
                log.info(
                    "list resourceVersion unavailable; listing the latest state",
                    extra={**extra, "error": e.message, "retry_in": f"{delay:.1f}s"},
                )
                self._stopping.wait(delay)
            else:
                self._need_list = True
                log.info(
                    "watch resourceVersion expired; relisting", extra={**extra, "error": e.message}
                )
            return
        delay = self._backoff.next()
        extra.update(error=e.message or str(e), retry_in=f"{delay:.1f}s")
        if e.status == 401:
            log.error("API server rejected the credentials (expired token?); retrying", extra=extra)
        elif e.status == 403:
            extra["needs"] = f"list,watch {self._spec.path}"
            log.error("API server denied access (check RBAC); retrying", extra=extra)
        elif e.status == 429:
            log.info("throttled by the API server; retrying", extra=extra)
        else:
            log.warning("request failed; retrying", extra=extra)
        self._stopping.wait(delay)

    def _check_stop(self) -> None:
        if self._stopping.is_set():
            raise _Stop

    def _deliver(self, event: EventType, obj: dict[str, Any], key: str) -> None:
        self._count(events=1)
        try:
            self._on_event(event, obj)
        except Exception:
            log.exception(
                "event handler failed; continuing",
                extra=self._extra(event=event, object=key),
            )

    def _list(self) -> None:
        assert self._session is not None
        if not self._last_rv:
            rv, limit = "0", True
        elif self._rv_unavailable:
            rv, limit = "", True
        else:
            rv, limit = self._last_rv, self._paginated
        base = self._spec.selectors()
        if limit:
            base["limit"] = str(PAGE_SIZE)
        params = {**base, "resourceVersion": rv} if rv else dict(base)
        seen: set[str] = set()
        added = modified = 0
        list_rv = ""
        pages = 0
        while True:
            self._check_stop()
            page = self._session.get_json(self._spec.path, params, timeout=LIST_TIMEOUT)
            pages += 1
            meta = page.get("metadata") or {}
            if not isinstance(meta, dict):
                raise ApiError(None, "BadResponse", "list metadata is not an object")
            rv_text = meta.get("resourceVersion")
            list_rv = rv_text if isinstance(rv_text, str) and rv_text else list_rv
            items = page.get("items") or []
            if not isinstance(items, list):
                raise ApiError(
                    None, "BadResponse", "list items is not a list", path=self._spec.path
                )
            for item in items:
                self._check_stop()
                if (why := malformed(item)) is not None:
                    self._skip_malformed("list item", why)
                    continue
                item.setdefault("kind", self._spec.kind)
                item.setdefault("apiVersion", self._api_version)
                strip_object(item)
                key = object_key(item)
                item_rv = str((item.get("metadata") or {}).get("resourceVersion") or "")
                seen.add(key)
                old = self._known.get(key)
                if old == item_rv:
                    continue
                self._known[key] = item_rv
                if old is None:
                    added += 1
                    self._deliver("ADDED", item, key)
                else:
                    modified += 1
                    self._deliver("MODIFIED", item, key)
            del items, page
            token = meta.get("continue")
            if not token:
                break
            if rv == "0":
                self._paginated = True  # no watch cache: page later lists as well
            params = {**base, "continue": str(token)}
        deleted = 0
        for key in [k for k in self._known if k not in seen]:
            self._check_stop()
            old_rv = self._known.pop(key)
            deleted += 1
            self._deliver("DELETED", self._stub(key, old_rv), key)
        first = not self._synced
        self._last_rv = list_rv
        self._rv_unavailable = False
        self._count(lists=1)
        log.info(
            "listed" if first else "relisted",
            extra=self._extra(
                objects=len(self._known),
                added=added,
                modified=modified,
                deleted=deleted,
                pages=pages,
                requested_rv=rv if rv else '""',
                resource_version=list_rv,
            ),
        )
        if first:
            self._synced = True
            if self._on_synced is not None:
                try:
                    self._on_synced()
                except Exception:
                    log.exception("on_synced handler failed", extra=self._extra())

    def _skip_malformed(self, what: str, why: str) -> None:
        self._count(malformed=1)
        self._report("malformed")
        log.warning(
            f"malformed {what} skipped; the rest is used",
            extra=self._extra(problem=why, skipped=self._stats.malformed),
        )

    def _stub(self, key: str, rv: str) -> dict[str, Any]:
        ns, _, name = key.rpartition("/")
        meta: dict[str, Any] = {"name": name, "resourceVersion": rv}
        if ns:
            meta["namespace"] = ns
        return {"apiVersion": self._api_version, "kind": self._spec.kind, "metadata": meta}

    def _watch(self) -> None:
        assert self._session is not None
        timeout = int(random.uniform(self._watch_timeout, 2 * self._watch_timeout))
        params = {
            **self._spec.selectors(),
            "resourceVersion": self._last_rv,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(max(1, timeout)),
        }
        self._check_stop()
        stream = self._session.watch(
            self._spec.path, params, timeout=max(1, timeout), idle_timeout=self._idle_timeout
        )
        self._count(watches=1)
        log.debug("watching", extra=self._extra(resource_version=self._last_rv, timeout=timeout))
        received = 0
        try:
            for event in stream:
                received += 1
                self._handle_event(event)
        finally:
            stream.close()
        self._check_stop()
        if received:
            self._backoff.reset()
            log.debug("watch ended; rewatching", extra=self._extra(resource_version=self._last_rv))
        else:
            delay = self._backoff.next()
            log.debug(
                "watch ended without events; rewatching after a pause",
                extra=self._extra(resource_version=self._last_rv, retry_in=f"{delay:.1f}s"),
            )
            self._stopping.wait(delay)

    def _handle_event(self, event: dict[str, Any]) -> None:
        self._check_stop()
        kind = event["type"]
        obj: dict[str, Any] = event["object"]
        if kind == "ERROR":
            raise ApiError.from_status(obj, path=self._spec.path)
        if (why := malformed(obj)) is not None and not (
            kind == "BOOKMARK" and isinstance(obj.get("metadata"), dict)
        ):
            self._skip_malformed(f"{kind} event", why)
            return
        meta = obj["metadata"]
        rv = meta.get("resourceVersion")
        rv = rv if isinstance(rv, str) else ""
        if kind == "BOOKMARK":
            if rv:
                self._last_rv = rv
            self._count(bookmarks=1)
            return
        etype = _EVENT_TYPES.get(kind)
        if etype is None:
            log.warning("unknown watch event type ignored", extra=self._extra(event=kind))
            return
        strip_object(obj)
        key = object_key(obj)
        if etype == "DELETED":
            self._known.pop(key, None)
        else:
            self._known[key] = rv
        if rv:
            self._last_rv = rv
        log.debug("event", extra=self._extra(event=etype, object=key, resource_version=rv))
        self._deliver(etype, obj, key)
