"""A minimal OCI distribution client (stdlib ``http.client``): push images, list them.

Pushing streams every blob from its source (an archive member or a store file), so
memory stays bounded whatever the layer size. A blob the registry already holds is
skipped (``HEAD``); one held under another repository is mounted across; small blobs go
up in one ``PUT``, big ones in ``PATCH`` chunks. Every response body read is capped.
Only plain HTTP is spoken: the lab's registry listens on a node-local address.
"""

from __future__ import annotations

import http.client
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from proxy.host.sockets import NetnsHTTPConnection
from proxy.lab import oci

MONOLITHIC_LIMIT = 32 << 20
"""Blobs up to this size go up in one PUT; bigger ones in PATCH chunks of CHUNK_SIZE."""
CHUNK_SIZE = 16 << 20
MAX_BODY = oci.MAX_JSON
MAX_PAGES = 1000
_ACCEPT = ", ".join((*oci.MANIFEST_TYPES, *oci.INDEX_TYPES))


class RegistryError(RuntimeError):
    """The registry refused or could not be reached; the message says which request."""


@dataclass(frozen=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


class _LimitedReader:
    """Hands out exactly ``size`` bytes of ``stream`` (http.client reads it in blocks)."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self._stream = stream
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if n < 0 else min(n, self._left)
        data = self._stream.read(want)
        if not data:
            raise RegistryError(f"blob source ended {self._left} bytes early")
        self._left -= len(data)
        return data


class RegistryClient:
    """Talks to one registry at ``http://host:port``; inside network namespace ``netns``
    (``/run/netns/NAME``) when given, without moving the calling thread there."""

    def __init__(self, url: str, timeout: float = 120.0, netns: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme != "http" or not parsed.hostname:
            raise RegistryError(
                f"registry URL {url!r}: give http://HOST:PORT (the lab registry speaks plain HTTP)"
            )
        self.url = f"http://{parsed.netloc}"
        self._host = parsed.hostname
        self._port = parsed.port or 80
        self._timeout = timeout
        self._netns = netns
        self._known: dict[str, str] = {}  # digest -> a repository that holds it

    @property
    def netns(self) -> str | None:
        return self._netns

    # ------------------------------------------------------------------ plumbing

    def _request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | _LimitedReader | None = None,
        headers: dict[str, str] | None = None,
        ok: Sequence[int] = (200,),
        what: str,
    ) -> _Response:
        conn = (
            NetnsHTTPConnection(self._netns, self._host, self._port, self._timeout)
            if self._netns
            else http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        )
        try:
            try:
                conn.request(method, target, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read(MAX_BODY + 1) if method != "HEAD" else b""
            except (OSError, http.client.HTTPException) as e:
                raise RegistryError(
                    f"{what}: {method} {self.url}{target}"
                    + (f" (in netns {self._netns})" if self._netns else "")
                    + f" failed: {e}. Is the registry running and reachable from there?"
                ) from e
        finally:
            conn.close()
        if len(data) > MAX_BODY:
            raise RegistryError(f"{what}: response larger than {MAX_BODY} bytes")
        headers_out = {k.lower(): v for k, v in resp.getheaders()}
        if resp.status not in ok:
            detail = data[:500].decode(errors="replace").strip()
            raise RegistryError(
                f"{what}: {method} {target} answered {resp.status} {resp.reason}"
                + (f": {detail}" if detail else "")
            )
        return _Response(resp.status, headers_out, data)

    @staticmethod
    def _upload_target(location: str) -> str:
        """Path and query of a Location/Link (absolute or relative); the host is ours."""
        parsed = urllib.parse.urlsplit(location)
        path = parsed.path or "/"
        return path + (f"?{parsed.query}" if parsed.query else "")

    @staticmethod
    def _with_query(target: str, **params: str) -> str:
        sep = "&" if "?" in target else "?"
        return target + sep + urllib.parse.urlencode(params)

    # ------------------------------------------------------------------ reads

    def ping(self) -> None:
        self._request("GET", "/v2/", ok=(200, 401), what="registry check")

    def has_blob(self, repo: str, digest: str) -> bool:
        resp = self._request(
            "HEAD", f"/v2/{repo}/blobs/{digest}", ok=(200, 404), what=f"check blob {digest}"
        )
        return resp.status == 200

    def manifest_digest(self, repo: str, reference: str) -> str:
        """The digest the registry reports for ``repo:reference`` (HEAD, no body)."""
        resp = self._request(
            "HEAD",
            f"/v2/{repo}/manifests/{reference}",
            headers={"Accept": _ACCEPT},
            what=f"look up {repo}:{reference}",
        )
        digest = resp.headers.get("docker-content-digest", "")
        return oci.check_digest(digest)

    def get_manifest(self, repo: str, reference: str) -> tuple[str, bytes]:
        """(media type, raw bytes) of a manifest."""
        resp = self._request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            headers={"Accept": _ACCEPT},
            what=f"read {repo}:{reference}",
        )
        return resp.headers.get("content-type", ""), resp.body

    def _paged(self, target: str, key: str, what: str) -> list[str] | None:
        """Items under ``key`` over every page; None when the first page is 404."""
        out: list[str] = []
        for _ in range(MAX_PAGES):
            resp = self._request("GET", target, ok=(200, 404), what=what)
            if resp.status == 404:
                if out:
                    raise RegistryError(f"{what}: a later page vanished (404)")
                return None
            obj: Any = oci.load_json(resp.body, what)
            items = obj.get(key) if isinstance(obj, dict) else None
            out.extend(str(i) for i in items or [])
            link = resp.headers.get("link", "")
            if not link.startswith("<") or ">" not in link:
                return out
            target = self._upload_target(link[1 : link.index(">")])
        raise RegistryError(f"{what}: more than {MAX_PAGES} pages")

    def catalog(self) -> list[str]:
        """Every repository the registry holds (``/v2/_catalog``, paged)."""
        repos = self._paged("/v2/_catalog?n=1000", "repositories", "list repositories")
        if repos is None:
            raise RegistryError(f"{self.url} has no /v2/_catalog; is it a distribution registry?")
        return repos

    def tags(self, repo: str) -> list[str]:
        """Tags of ``repo`` (``/v2/<repo>/tags/list``); [] when it does not exist."""
        return self._paged(f"/v2/{repo}/tags/list", "tags", f"list tags of {repo}") or []

    # ------------------------------------------------------------------ writes

    def _start_upload(self, repo: str, what: str) -> str:
        resp = self._request("POST", f"/v2/{repo}/blobs/uploads/", ok=(202,), what=what)
        location = resp.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload Location")
        return self._upload_target(location)

    def _try_mount(self, repo: str, digest: str) -> bool:
        source = self._known.get(digest)
        if source is None or source == repo:
            return False
        resp = self._request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?"
            + urllib.parse.urlencode({"mount": digest, "from": source}),
            ok=(201, 202),
            what=f"mount {digest} from {source}",
        )
        # 202: the registry opened a plain upload instead; it is abandoned (it expires).
        return resp.status == 201

    def push_blob(self, repo: str, source: oci.BlobSource, digest: str) -> bool:
        """Upload one blob unless ``repo`` already has it; True when bytes were sent."""
        oci.check_digest(digest)
        if self.has_blob(repo, digest) or self._try_mount(repo, digest):
            self._known.setdefault(digest, repo)
            return False
        size = source.blob_size(digest)
        what = f"upload {digest[:19]}… to {repo}"
        target = self._start_upload(repo, what)
        with source.open_blob(digest) as stream:
            if size <= MONOLITHIC_LIMIT:
                self._request(
                    "PUT",
                    self._with_query(target, digest=digest),
                    body=_LimitedReader(stream, size),
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                    },
                    ok=(201,),
                    what=what,
                )
            else:
                offset = 0
                while offset < size:
                    n = min(CHUNK_SIZE, size - offset)
                    resp = self._request(
                        "PATCH",
                        target,
                        body=_LimitedReader(stream, n),
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Length": str(n),
                            "Content-Range": f"{offset}-{offset + n - 1}",
                        },
                        ok=(202,),
                        what=what,
                    )
                    offset += n
                    target = self._upload_target(resp.headers.get("location") or target)
                self._request(
                    "PUT",
                    self._with_query(target, digest=digest),
                    headers={"Content-Length": "0"},
                    ok=(201,),
                    what=what,
                )
        self._known[digest] = repo
        return True

    def put_manifest(self, repo: str, reference: str, raw: bytes, media_type: str) -> str:
        """PUT a manifest under a tag (or digest); return the digest the registry reports."""
        resp = self._request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            body=raw,
            headers={"Content-Type": media_type, "Content-Length": str(len(raw))},
            ok=(201,),
            what=f"push manifest {repo}:{reference}",
        )
        digest = resp.headers.get("docker-content-digest") or oci.sha256_digest(raw)
        return oci.check_digest(digest)

    def push_image(
        self, source: oci.BlobSource, view: oci.ImageView, repo: str, tags: Sequence[str]
    ) -> str:
        """Push an image's blobs then its manifest under each tag; return its digest."""
        for blob in view.blobs:
            self.push_blob(repo, source, blob.digest)
        digest = view.descriptor.digest
        media = view.descriptor.media_type or oci.MEDIA_MANIFEST
        for tag in tags:
            got = self.put_manifest(repo, tag, view.raw, media)
            if got != digest:
                raise RegistryError(
                    f"push {repo}:{tag}: registry stored digest {got}, expected {digest}"
                )
        return digest

    def iter_tags(self) -> Iterator[tuple[str, list[str]]]:
        """(repository, tags) for every repository."""
        for repo in self.catalog():
            yield repo, self.tags(repo)
