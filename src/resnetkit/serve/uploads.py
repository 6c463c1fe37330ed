"""Read uploaded images into memory, within the byte and file-count limits; never onto disk.

The body is read as a stream and refused (413) as soon as it passes the limit, before it
is parsed; a too-large ``Content-Length`` is refused without reading at all. A gzip or deflate
body (``Content-Encoding``) is inflated only up to the same limit. Multipart
bodies are then parsed from memory with spooled files that are larger than the whole body,
so python-multipart never rolls a part over to a temporary file.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass
from typing import AsyncIterator, TypeVar

from pydantic import BaseModel, ValidationError

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from .hub import ServeError
from .metrics import CLIENT_CLOSED

Request_ = TypeVar("Request_", bound=BaseModel)
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # the Content-Encodings read, as zlib's wbits
_URL_SAFE = str.maketrans("-_", "+/")


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


async def read_uploads(request: Request, *, max_bytes: int, max_files: int, field: str | None = "file") -> list[Upload]:
    """The images of ``request``: multipart parts named ``field`` (any file part if ``None``), or the raw body."""
    body = await read_body(request, max_bytes)
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return [Upload(None, body)]
    uploads = await _parse_multipart(request, body, field)
    if not uploads:
        wanted = f"file field named '{field}'" if field else "file field"
        raise ServeError(422, f"The multipart request has no {wanted}. Send e.g. curl -F {field or 'data'}=@photo.jpg.")
    if len(uploads) > max_files:
        raise ServeError(413, f"{len(uploads)} files in one request; the limit is {max_files}. "
                              "Split them over several requests.")
    return uploads


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 once it passes ``max_bytes`` (checked before and while reading,
    and while inflating a compressed body)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity" and encoding not in _WBITS:
        raise ServeError(415, f"Content-Encoding {encoding!r} is not supported; send the body uncompressed, "
                              f"or compressed with {' or '.join(_WBITS)}.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise _too_large(len(body), max_bytes, at_least=True)
    except ClientDisconnect:
        raise ServeError(CLIENT_CLOSED, "The client closed the connection during the upload.") from None
    return bytes(body) if encoding == "identity" else _inflate(bytes(body), encoding, max_bytes)


def _inflate(data: bytes, encoding: str, max_bytes: int) -> bytes:
    """``data`` decompressed; one byte more than ``max_bytes`` is enough to refuse it, so a zip bomb
    never fills the memory."""
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        body = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise ServeError(400, f"The body is not valid {encoding} data (Content-Encoding: {encoding}): {exc}.") from None
    if len(body) > max_bytes:
        raise _too_large(len(body), max_bytes, at_least=True)
    if not inflater.eof or inflater.unused_data:
        raise ServeError(400, f"The {encoding} body is cut short or has data after its end (Content-Encoding: "
                              f"{encoding}).")
    return body


def _too_large(size: int, limit: int, at_least: bool = False) -> ServeError:
    more = "more than " if at_least else ""
    mib = 1024 * 1024
    return ServeError(413, f"The request is {more}{size / mib:.2f} MiB; the limit is {limit / mib:.2f} MiB "
                           "(--max-upload-mb). Send smaller or fewer images per request.")


async def _parse_multipart(request: Request, body: bytes, field: str | None) -> list[Upload]:
    async def once() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(request.headers, once())
    parser.spool_max_size = len(body) + 1  # every part fits in memory: no temporary file is ever created
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServeError(422, f"The multipart body could not be parsed: {exc.message}") from None
    files = [(name, value) for name, value in form.multi_items() if isinstance(value, UploadFile)]
    return [Upload(value.filename, await value.read()) for name, value in files if field is None or name == field]


def parse_json(body: bytes, schema: type[Request_], what: str, example: str) -> Request_:
    """``body`` as ``schema``, or a 400 naming the first problem (bad JSON, a missing or mistyped field)."""
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ServeError(400, f"Not {what}: {where}: {first['msg']}. Send JSON like {example}.") from None


def decode_base64(text: str, what: str) -> bytes:
    """The bytes of a base64 string, or a 400 saying that ``what`` is not valid base64. Line breaks (MIME
    base64, as ``base64.encodebytes`` and ``base64`` without ``-w0`` write it), the URL-safe alphabet
    (``-``, ``_``) and missing ``=`` padding are accepted."""
    compact = "".join(text.split()).translate(_URL_SAFE)
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, f"{what} is not valid base64; encode the image file with base64 "
                              "(e.g. base64 -w0 photo.jpg).") from None
