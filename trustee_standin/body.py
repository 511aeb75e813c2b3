"""Bounded request-body reading for the stand-in's routes (development and tests only)."""

from __future__ import annotations

from aiohttp import web

from trustee_standin.config import MAX_BODY
from trustee_standin.errors import KbsHttpError


def payload_too_large() -> KbsHttpError:
    return KbsHttpError("PayloadTooLarge", "Payload too large")


async def read_body(request: web.Request) -> bytes:
    """The request body, or ``PayloadTooLarge`` (413) beyond 1 MiB without buffering the excess."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise payload_too_large()
    try:
        body = await request.content.read(MAX_BODY + 1)  # read() may return less than requested
        chunks = [body]
        total = len(body)
        while body and total <= MAX_BODY:
            body = await request.content.read(MAX_BODY + 1 - total)
            chunks.append(body)
            total += len(body)
    except web.HTTPRequestEntityTooLarge:
        raise payload_too_large() from None
    if total > MAX_BODY:
        raise payload_too_large()
    return b"".join(chunks)
