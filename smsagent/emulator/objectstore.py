"""A small S3-compatible object store (the part of OBS the agent's log upload uses), served on
a port of its own, that checks every request's SigV4 signature against the emulator's AK/SK.

Path-style requests only (`/bucket/key`). Served: `PUT`, `GET` and `HEAD` of an object, `HEAD`
of a bucket and `GET /bucket?location`. The buckets are fixed at start-up; a bucket named as
denied exists but answers every signed request with 403 `AccessDenied`, as a bucket whose
policy refuses this user does. An unknown bucket is 404 `NoSuchBucket`. Objects live in memory.
Errors are S3's XML bodies.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Callable, Final, Optional
from xml.sax.saxutils import escape

from aiohttp import web

from smsagent.emulator import sigv4

DEFAULT_REGION: Final = "ap-southeast-3"
DEFAULT_MAX_OBJECT_BYTES: Final = 64 * 1024 * 1024
XML: Final = "application/xml"


@dataclass(frozen=True)
class ObjectStoreOptions:
    """What the object store serves (the `--obs-*` flags).

    Attributes:
        port: the port to listen on; 0 picks a free one.
        region: the region signatures must be scoped to.
        buckets: buckets that accept the emulator's AK/SK.
        denied_buckets: buckets that refuse it with 403 `AccessDenied`.
        max_object_bytes: larger uploads get 400 `EntityTooLarge`.
    """

    port: int = 0
    region: str = DEFAULT_REGION
    buckets: tuple[str, ...] = ()
    denied_buckets: tuple[str, ...] = ()
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES


@dataclass(frozen=True)
class StoredObject:
    """One object and what a GET answers with it."""

    data: bytes
    etag: str
    content_type: str
    modified_s: float


@dataclass
class ObjectStore:
    """The buckets, their objects and the requests seen; `routes()` serves them."""

    options: ObjectStoreOptions
    ak: str
    sk: str = field(repr=False)
    clock: Callable[[], float] = time.time
    url: Optional[str] = None
    objects: dict[str, dict[str, StoredObject]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Empty every bucket and forget the requests."""
        names = (*self.options.buckets, *self.options.denied_buckets)
        self.objects = {name: {} for name in names}
        self.requests = []

    def describe(self) -> dict[str, Any]:
        """The state dump's `obs` part: the URL, the buckets with their objects, the requests."""
        return {
            "url": self.url,
            "region": self.options.region,
            "buckets": {
                name: {
                    "denied": name in self.options.denied_buckets,
                    "objects": [
                        {"key": key, "size": len(obj.data), "etag": obj.etag}
                        for key, obj in sorted(objects.items())
                    ],
                }
                for name, objects in sorted(self.objects.items())
            },
            "requests": list(self.requests),
        }

    def app(self) -> web.Application:
        """The application of the object store's port."""
        app = web.Application(
            middlewares=[self._errors], client_max_size=self.options.max_object_bytes + 1
        )
        app.add_routes(
            [
                web.route("*", "/{bucket}", self._bucket),
                web.route("*", "/{bucket}/{key:.+}", self._object),
            ]
        )
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        entry = {"method": request.method, "path": request.path, "at": self.clock()}
        try:
            response = await handler(request)
        except sigv4.SigV4Error as exc:
            response = _error_response(exc, request.path)
            entry["code"] = exc.code
        except web.HTTPRequestEntityTooLarge:
            too_large = sigv4.SigV4Error(400, "EntityTooLarge", "the object is larger than allowed")
            response = _error_response(too_large, request.path)
            entry["code"] = too_large.code
        entry["status"] = response.status
        self.requests.append(entry)
        return response

    def _authorize(self, request: web.Request) -> str:
        """Check the signature and the bucket; returns the declared payload hash."""
        headers = sigv4.lower_headers(request.headers.items())
        raw_path, _, raw_query = request.raw_path.partition("?")
        sigv4.verify(
            request.method,
            raw_path,
            raw_query,
            headers,
            lambda ak: self.sk if ak == self.ak else None,
            self.options.region,
            self.clock(),
        )
        bucket = request.match_info["bucket"]
        if bucket not in self.objects:
            raise sigv4.SigV4Error(404, "NoSuchBucket", "the specified bucket does not exist")
        if bucket in self.options.denied_buckets:
            raise sigv4.SigV4Error(403, "AccessDenied", "Access Denied")
        return sigv4.declared_payload_hash(headers)

    async def _bucket(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        if request.method == "HEAD":
            return web.Response(headers={"x-amz-bucket-region": self.options.region})
        if request.method == "GET" and "location" in request.query:
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint '
                'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"{escape(self.options.region)}</LocationConstraint>"
            )
            return web.Response(body=body.encode(), content_type=XML)
        raise _not_implemented(request)

    async def _object(self, request: web.Request) -> web.StreamResponse:
        declared = self._authorize(request)
        if request.query:
            raise _not_implemented(request)
        objects = self.objects[request.match_info["bucket"]]
        key = request.match_info["key"]
        if request.method == "PUT":
            body = await request.read()
            sigv4.check_payload(declared, body)
            stored = StoredObject(
                data=body,
                etag=f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"',
                content_type=request.headers.get("Content-Type", "application/octet-stream"),
                modified_s=self.clock(),
            )
            objects[key] = stored
            return web.Response(headers={"ETag": stored.etag})
        if request.method in ("GET", "HEAD"):
            found = objects.get(key)
            if found is None:
                raise sigv4.SigV4Error(404, "NoSuchKey", "the specified key does not exist")
            headers = {
                "ETag": found.etag,
                "Last-Modified": formatdate(found.modified_s, usegmt=True),
                "Content-Type": found.content_type,
                "Content-Length": str(len(found.data)),
            }
            body = b"" if request.method == "HEAD" else found.data
            return web.Response(body=body, headers=headers)
        raise _not_implemented(request)


def _not_implemented(request: web.Request) -> sigv4.SigV4Error:
    query = f"?{request.query_string}" if request.query else ""
    what = f"{request.method} {request.path}{query}"
    return sigv4.SigV4Error(501, "NotImplemented", f"{what} is not implemented by this store")


def _error_response(exc: sigv4.SigV4Error, resource: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
        f"<Code>{escape(exc.code)}</Code><Message>{escape(exc.message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{uuid.uuid4().hex}</RequestId>"
        "</Error>"
    )
    return web.Response(status=exc.status, body=body.encode(), content_type=XML)


def bucket_names(values: Iterable[str]) -> tuple[str, ...]:
    """Bucket names from repeated flags, each once, in order."""
    return tuple(dict.fromkeys(v.strip() for v in values if v.strip()))
