"""/v1/uploads: OpenAI's multi-part uploads for large files (8 GB, 64 MB parts), passed through to
providers that have them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.common import context, context_and_input, json_body, remember, respond
from tunegate.api.files import FormFile, read_form_file
from tunegate.errors import InvalidRequest, missing_param
from tunegate.providers.base import FILE_PURPOSES, JSON, IncomingFile

MAX_UPLOAD_BYTES = 8 * 1024**3
MAX_PART_BYTES = 64 * 1024**2
# Bounds of the create's strings: they travel to the provider and into its error messages.
MAX_FILENAME = 512
MAX_MIME_TYPE = 255


def _upload_ref(request: Request) -> tuple[str, str]:
    return ("upload", request.path_params["upload_id"])


async def create_upload(request: Request) -> Response:
    ctx = await context(request)
    body = await json_body(request)
    for name in ("filename", "purpose", "bytes", "mime_type"):
        if body.get(name) is None:
            raise missing_param(name)
    for name, limit in (("filename", MAX_FILENAME), ("mime_type", MAX_MIME_TYPE)):
        value = body[name]
        if not isinstance(value, str) or not 1 <= len(value) <= limit:
            raise InvalidRequest(f"'{name}' must be a string of 1 to {limit} characters.", param=name,
                                 code="invalid_value")
    if body["purpose"] not in FILE_PURPOSES:
        raise InvalidRequest(f"'purpose' must be one of {', '.join(FILE_PURPOSES)}.", param="purpose",
                             code="invalid_value")
    size = body["bytes"]
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_UPLOAD_BYTES:
        raise InvalidRequest(f"'bytes' must be an integer from 0 to {MAX_UPLOAD_BYTES}.", param="bytes")
    created = await ctx.provider.create_upload(ctx, body)
    await remember(ctx, "upload", created, created=True)
    return respond(created)


async def add_part(request: Request) -> Response:
    async def read_part() -> FormFile:
        return await read_form_file(request, "data", MAX_PART_BYTES)

    ctx, form = await context_and_input(request, _upload_ref(request), read_part, _drain)
    part = IncomingFile(filename=form.filename, purpose="", content_type=form.content_type, chunks=form.chunks)
    try:
        return respond(await ctx.provider.add_upload_part(ctx, request.path_params["upload_id"], part))
    finally:
        form.close()


async def _drain(form: FormFile) -> None:
    """A part read only to be refused: its bytes are read (within the part's bound) as an unknown id's
    part is sent on, so the two answers do not differ in how the connection is left."""
    try:
        async for _chunk in form.chunks:
            pass
    finally:
        form.close()


async def complete_upload(request: Request) -> Response:
    async def read_body() -> JSON:
        body = await json_body(request)
        if not isinstance(body.get("part_ids"), list):
            raise missing_param("part_ids")
        return body

    ctx, body = await context_and_input(request, _upload_ref(request), read_body)
    done = await ctx.provider.complete_upload(ctx, request.path_params["upload_id"], body)
    await remember(ctx, "upload", done)
    if isinstance(done.get("file"), dict):
        await remember(ctx, "file", done["file"], created=True)
    return respond(done)


async def cancel_upload(request: Request) -> Response:
    ctx = await context(request, _upload_ref(request))
    done = await ctx.provider.cancel_upload(ctx, request.path_params["upload_id"])
    await remember(ctx, "upload", done)
    return respond(done)
