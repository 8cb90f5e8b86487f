"""/v1/files: streamed uploads (validated on the way through), listing, retrieval, deletion and
streamed downloads."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tunegate.api import datasets
from tunegate.api.common import context, page, remember, respond, services, unclaimed_result, visible
from tunegate.context import RequestContext
from tunegate.errors import APIError, InvalidRequest, NotFound, NotSupported, PayloadTooLarge, missing_param
from tunegate.multipart import MultipartReader
from tunegate.providers.base import JSON, IncomingFile
from tunegate.spool import Spool

if TYPE_CHECKING:
    from tunegate.data.helper import ValidatorProcess

FILE_FIELD_LIMIT = 64 * 1024  # one text field of a multipart form
MAX_FORM_FIELDS = 32  # text fields in one form (OpenAI's file forms have at most four)
MAX_FORM_FIELD_BYTES = 256 * 1024  # all text fields of one form together
FORM_OVERHEAD = 1024 * 1024  # what a form may hold besides its file: boundaries, headers, fields
# Uploads at least this large (by Content-Length) validate in a helper process; None: never (the default:
# on the shared 2-core bench machine the helper measured slower than inline validation, docs/performance.md).


async def bounded(body: AsyncIterator[bytes], limit: int, param: str | None = None) -> AsyncIterator[bytes]:
    """A request body that ends in a 413 once more than ``limit`` bytes have been read: counts what
    arrives, so a chunked body (no Content-Length) or one that lies about its length is held to it too."""
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than this gateway's limit of {limit} bytes.",
                                  param=param)
        yield chunk


class GuardedChunks:
    """The file's bytes on their way to the provider, checked as they pass. A failed check raises
    inside the provider's body stream, so the upstream request is aborted before it completes and
    nothing is created there; ``error`` keeps the real reason for the client. The check runs inline
    (``validator``) or in a helper process (``remote``) that validates while the bytes go upstream;
    either way the body's end waits for the verdict."""

    def __init__(self, chunks: AsyncIterator[bytes], validator: object | None,
                 remote: ValidatorProcess | None = None) -> None:
        self._chunks = chunks
        self._validator = None if remote is not None else validator
        self._remote = remote
        self.error: BaseException | None = None
        self.report: Any = None  # the validator's report, once the whole file has passed
        self.bytes = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._chunks:
                self.bytes += len(chunk)
                if self._remote is not None:
                    await self._remote.feed(chunk)
                elif self._validator is not None:
                    self._validator.feed(chunk)  # type: ignore[attr-defined]
                yield chunk
            report = None
            if self._remote is not None:
                report = await self._remote.finish()
            elif self._validator is not None:
                report = self._validator.finish()  # type: ignore[attr-defined]
            self.report = report
            if report is not None and not report.ok:
                raise InvalidRequest("The training file is not valid: " + report.summary(),
                                     param="file", code="invalid_training_file")
        except BaseException as exc:
            self.error = exc
            raise


def _validator_for(ctx: RequestContext, purpose: str, max_bytes: int) -> object | None:
    settings = services_settings(ctx)
    if purpose != "fine-tune" or not settings.validate_uploads or ctx.option("validate_uploads") in (False, "false"):
        return None
    from tunegate.data.validator import Validator  # the data package is optional at import time

    return Validator(method=str(ctx.option("validation_method", "supervised")), model=None, max_bytes=max_bytes)


async def _helper_for(validator: object | None, size_hint: int | None,
                      min_bytes: int | None) -> ValidatorProcess | None:
    """A helper process to validate on another core, when that can pay: a file of at least ``min_bytes``
    (``validate_uploads_in_helper_from_bytes``; the helper's start costs ~0.1 s of CPU and ~20 MB while it
    runs) and a core to run it on (fewer helpers at once than cores: more would only take turns, each
    with its 20 MB). Otherwise (small or unsized bodies, one core, helpers on every other core) validation
    stays inline."""
    if validator is None or min_bytes is None or size_hint is None or size_hint < min_bytes:
        return None
    from tunegate.data.helper import ValidatorProcess

    if ValidatorProcess.running >= _cores() - 1:
        return None

    v: Any = validator
    return await ValidatorProcess.start(v.method, v.max_bytes)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def services_settings(ctx: RequestContext):  # type: ignore[no-untyped-def]
    assert ctx.settings is not None
    return ctx.settings


@dataclass
class FormFile:
    """The file part of a multipart form, ready to stream, and the form's text fields."""

    fields: dict[str, str]
    chunks: AsyncIterator[bytes]
    filename: str
    content_type: str
    spool: Spool | None = None  # set when the file had to wait on disk for a later field

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


async def read_form_file(request: Request, file_field: str, max_bytes: int, needs: tuple[str, ...] = ()) -> FormFile:
    """Read a multipart form up to its file part. When the fields the upload ``needs`` come first (as the
    Python SDK and OpenAI's curl examples send them), the file streams on from the request without being
    stored. When the file comes first (the Node SDK's order), it is spooled to disk while the rest of the
    form is read. The caller closes the returned form."""
    content_type = request.headers.get("content-type", "")
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD:
        raise PayloadTooLarge(f"The upload is larger than this gateway's limit of {max_bytes} bytes.", param=file_field)
    reader = MultipartReader(bounded(request.stream(), max_bytes + FORM_OVERHEAD, file_field), content_type,
                             max_bytes)
    fields: dict[str, str] = {}
    file: tuple[str, str] | None = None  # (filename, content type)
    spooled: Spool | None = None
    field_count = field_bytes = 0
    try:
        while (part := await reader.next_part()) is not None:
            if part.name == file_field and part.filename is not None and file is None:
                file = (part.filename or "upload", part.content_type)
                if all(fields.get(name) for name in needs):
                    return FormFile(fields, reader.chunks(), *file)
                spooled = Spool()
                await spooled.fill(reader.chunks())
                continue
            if part.filename is not None:
                raise InvalidRequest(f"Unexpected file field '{part.name}'.", param=part.name, code="invalid_multipart")
            field_count += 1  # parts, not names: a repeated name must count each time
            if field_count > MAX_FORM_FIELDS:
                raise PayloadTooLarge(f"The form has more than {MAX_FORM_FIELDS} text fields.", code="too_many_fields")
            fields[part.name] = value = await reader.text(FILE_FIELD_LIMIT, part.name)
            field_bytes += len(value)
            if field_bytes > MAX_FORM_FIELD_BYTES:
                raise PayloadTooLarge(f"The form's text fields are larger than {MAX_FORM_FIELD_BYTES} bytes "
                                      "together.", code="fields_too_large")
    except BaseException:
        if spooled is not None:
            spooled.close()
        raise
    if file is None or spooled is None:
        raise missing_param(file_field)
    return FormFile(fields, spooled.chunks(), *file, spool=spooled)


def _file_default(request: Request) -> str | None:
    return services(request).settings.default_file_provider


async def upload_file(request: Request) -> Response:
    ctx = await context(request, default_provider=_file_default(request))
    max_bytes = services(request).settings.max_upload_bytes
    slots = services(request).uploads
    with slots.hold(ctx.key_id or "open", services(request).settings.max_concurrent_uploads):
        form = await read_form_file(request, "file", max_bytes, needs=("purpose",))
        try:
            created, report = await _upload(ctx, form, max_bytes, _declared_length(request))
        finally:
            form.close()
    await remember(ctx, "file", created, created=True)
    if ctx.provider.keeps_files and report is not None and ctx.store is not None:
        await ctx.store.set_managed_report(created["id"], report.to_dict())  # shown in the dashboard
    elif report is not None:
        await datasets.record_upload(ctx, created, report.to_dict())  # the count a job create checks
    return respond(created)


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    # ASCII digits only: str.isdigit passes '²' (int() refuses it) and '١٢' (int() reads 12).
    return int(declared) if declared and declared.isascii() and declared.isdigit() else None


async def _upload(ctx: RequestContext, form: FormFile, max_bytes: int,
                  size_hint: int | None = None) -> tuple[JSON, Any]:
    """Send the form's file to the provider, validated on the way: (the file object, the validation report)."""
    purpose = form.fields.pop("purpose", None)
    if not purpose:
        raise missing_param("purpose")
    validator = _validator_for(ctx, purpose, max_bytes)
    remote = await _helper_for(validator, size_hint, services_settings(ctx).validate_uploads_in_helper_from_bytes)
    try:
        return await _send(ctx, form, purpose, GuardedChunks(form.chunks, validator, remote))
    finally:
        if remote is not None:
            remote.close()  # a failed or cancelled upload: the helper goes with it


async def _send(ctx: RequestContext, form: FormFile, purpose: str, guarded: GuardedChunks) -> tuple[JSON, Any]:
    incoming = IncomingFile(filename=form.filename, purpose=purpose, content_type=form.content_type,
                            chunks=guarded.__aiter__(), fields=form.fields)
    try:
        created = await ctx.provider.upload_file(ctx, incoming)
    except APIError:
        if isinstance(guarded.error, APIError):
            raise guarded.error from None
        raise
    if isinstance(guarded.error, BaseException):  # an adapter swallowed it: never register a bad file
        raise guarded.error
    return created, guarded.report


async def list_files(request: Request) -> Response:
    ctx = await context(request, default_provider=_file_default(request))
    listing = await ctx.provider.list_files(ctx, page(request, 10000, "purpose", "order"))
    return respond(await visible(ctx, "file", listing))


def _file_ref(request: Request) -> tuple[str, str]:
    return ("file", request.path_params["file_id"])


async def _unrecorded(ctx: RequestContext, file_id: str) -> bool:
    """Whether a keyed request names a file the registry does not know (then made elsewhere)."""
    return ctx.key is not None and ctx.store is not None and await ctx.store.placement("file", file_id) is None


def _refuse_unclaimed_result(file_id: str, found: JSON) -> None:
    if unclaimed_result(found):
        raise NotFound(f"No such File object: '{file_id}'.", param="file_id")


async def _check_unrecorded(ctx: RequestContext, file_id: str) -> None:
    """Before a download or delete of a file the registry does not know: a job's result file is reached
    only once its job has given it an owner (docs/security.md, rule on result files)."""
    if await _unrecorded(ctx, file_id):
        try:
            found = await ctx.provider.retrieve_file(ctx, file_id)
        except NotSupported:
            return
        _refuse_unclaimed_result(file_id, found)


async def retrieve_file(request: Request) -> Response:
    ctx = await context(request, _file_ref(request))
    file_id = request.path_params["file_id"]
    unrecorded = await _unrecorded(ctx, file_id)
    found: JSON = await ctx.provider.retrieve_file(ctx, file_id)
    if unrecorded:
        _refuse_unclaimed_result(file_id, found)
    await remember(ctx, "file", found)
    return respond(found)


async def delete_file(request: Request) -> Response:
    ctx = await context(request, _file_ref(request))
    await _check_unrecorded(ctx, request.path_params["file_id"])
    result = await ctx.provider.delete_file(ctx, request.path_params["file_id"])
    if ctx.store is not None:
        await ctx.store.forget("file", request.path_params["file_id"])
        await datasets.forget_upload(ctx, request.path_params["file_id"])
    return respond(result)


async def file_content(request: Request) -> Response:
    ctx = await context(request, _file_ref(request))
    await _check_unrecorded(ctx, request.path_params["file_id"])
    download = await ctx.provider.file_content(ctx, request.path_params["file_id"])
    return StreamingResponse(download.chunks, media_type=download.media_type, headers=download.headers)
