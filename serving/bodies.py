"""Request bodies, read whole and decoded from their ``Content-Encoding`` within the body
limit (``DRIFTLINE_API_MAX_BODY_BYTES``, the app's ``client_max_size``).

aiohttp's own inflation is off (``auto_decompress=False`` in :func:`serving.app.create_app`):
it also inflates what it drains after an early answer (a 401 before the body is read, a
413), so 1 MB of gzip cost 2.8 s of CPU inflating a gigabyte nobody wanted. Here a body is
inflated only when a handler reads it, and never past the limit.
"""

from __future__ import annotations

import zlib

from aiohttp import hdrs, web

from serving.errors import Unreadable

GZIP = 16 + zlib.MAX_WBITS
CODINGS: dict[str, int | None] = {"identity": None, "gzip": GZIP, "x-gzip": GZIP,
                                  "deflate": zlib.MAX_WBITS}


async def read_body(request: web.Request) -> bytes:
    """The body, decoded. A 413 when it comes, or inflates to, larger than the limit; a 400
    naming the field when its coding is not one of :data:`CODINGS` or its compressed data
    is broken."""
    coding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower() or "identity"
    if coding not in CODINGS:
        raise Unreadable("Content-Encoding", f"{coding!r} is not one of {', '.join(CODINGS)}")
    raw = await request.read()  # 413 past the limit, compressed as it is
    wbits = CODINGS[coding]
    if wbits is None:
        return raw
    try:
        return inflate(raw, wbits, request.client_max_size)
    except zlib.error as exc:
        raise Unreadable("$", f"broken {coding} data ({exc})") from None


def inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """``data`` inflated member after member (gzip allows several), with at most ``limit + 1``
    bytes of output made: :class:`web.HTTPRequestEntityTooLarge` past ``limit``, so a bomb
    costs what the limit's worth costs. ``zlib.error`` when the data is broken or cut short.

    >>> import gzip
    >>> inflate(gzip.compress(b"[1]") * 2, GZIP, 100)
    b'[1][1]'
    >>> inflate(gzip.compress(bytes(10**7)), GZIP, 1000)
    Traceback (most recent call last):
    ...
    aiohttp.web_exceptions.HTTPRequestEntityTooLarge: Request Entity Too Large
    >>> inflate(gzip.compress(b"[1]")[:-4], GZIP, 100)
    Traceback (most recent call last):
    ...
    zlib.error: the compressed data ends early
    """
    out = bytearray()
    while data:
        # As aiohttp does: "deflate" without the zlib header is taken as raw deflate.
        raw = wbits == zlib.MAX_WBITS and data[0] & 0x0F != zlib.DEFLATED
        member = zlib.decompressobj(-zlib.MAX_WBITS if raw else wbits)
        out += member.decompress(data, limit + 1 - len(out))  # max_length is never 0 here
        if len(out) > limit:
            raise web.HTTPRequestEntityTooLarge(limit, len(out))
        if not member.eof:
            raise zlib.error("the compressed data ends early")
        data = member.unused_data
    return bytes(out)
