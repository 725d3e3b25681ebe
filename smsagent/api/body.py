"""The capped read of a response body, shared by the SMS and the IAM calls: a body over the cap
is refused without being read whole."""

from __future__ import annotations

from typing import Final, Optional

import aiohttp

MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
"""The largest response body read; real SMS and IAM answers are a few KB."""
_READ_CHUNK_BYTES: Final = 64 * 1024


async def read_capped(response: aiohttp.ClientResponse, limit_bytes: int) -> Optional[bytes]:
    """The body of `response`, or None when it is longer than `limit_bytes`.

    A declared `Content-Length` over the cap is refused before anything is read; otherwise the
    body is read in chunks and refused as soon as it passes the cap (counted after any
    decompression). A refused response is closed, not released: its connection is dropped
    instead of being drained for reuse.
    """
    declared = response.content_length
    if declared is not None and declared > limit_bytes:
        response.close()
        return None
    body = bytearray()
    while True:
        chunk = await response.content.read(_READ_CHUNK_BYTES)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit_bytes:
            response.close()
            return None
