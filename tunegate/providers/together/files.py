"""Files: Together's ``FileResponse`` → OpenAI's ``file``, purposes both ways, and the training
data on its way up (converted line by line to Together's conversational format).

Spec: ``../shared/specs/together-openapi.yaml`` (FileResponse, FilePurpose, FileType, FileList,
FileDeleteResponse; ``POST /files/upload``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from tunegate import models
from tunegate.errors import InvalidRequest
from tunegate.providers.base import JSON
from tunegate.providers.together.jobs import unix

# OpenAI purpose → Together FilePurpose, for uploads.
UPLOAD_PURPOSE = {"fine-tune": "fine-tune", "batch": "batch-api", "evals": "eval"}
# Together FilePurpose → OpenAI purpose, for answers (others pass through unchanged).
ANSWER_PURPOSE = {"batch-api": "batch", "batch-generated": "batch_output"}
FLUSH_BYTES = 256 * 1024
FILE_TYPES = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet"}
# Which Together purposes take which non-JSONL types: CSV only for evaluations, Parquet for anything
# but them (together-python src/together/utils/files.py `_check_csv`, `_check_parquet`; the same in
# together==3.1.1 together/lib/utils/files.py). The SDKs refuse the rest before uploading.
TYPE_PURPOSES = {"csv": frozenset({"eval"}), "parquet": frozenset({"fine-tune", "batch-api"})}
# together==3.1.1 FileResponse.processing_status → OpenAI's file status (Together validates files
# after the upload; older answers carry only `Processed`).
PROCESSING_STATUS = {"PENDING": "uploaded", "QUEUED": "uploaded", "RUNNING": "uploaded", "COMPLETED": "processed",
                     "FAILED": "error", "INVALID_FORMAT": "error"}


def together_purpose(purpose: str) -> str:
    try:
        return UPLOAD_PURPOSE[purpose]
    except KeyError:
        raise InvalidRequest(f"Together accepts files for the purposes {', '.join(sorted(UPLOAD_PURPOSE))}, "
                             f"not {purpose!r}.", param="purpose", code="unsupported_parameter") from None


def file_type(filename: str, purpose: str) -> str:
    """Together's FileType from the file's extension (JSONL unless it says csv or parquet), refused
    for a purpose Together does not take it for."""
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    ftype = FILE_TYPES.get(ext, "jsonl")
    if ftype in TYPE_PURPOSES and purpose not in TYPE_PURPOSES[ftype]:
        allowed = " or ".join(sorted(ANSWER_PURPOSE.get(p, "evals" if p == "eval" else p)
                                     for p in TYPE_PURPOSES[ftype]))
        raise InvalidRequest(f"Together takes {ftype.upper()} files only for purpose {allowed}; send JSON Lines "
                             "(.jsonl) for this purpose.", param="file", code="unsupported_file_type")
    return ftype


def _status(raw: JSON) -> tuple[str, str | None]:
    """(OpenAI status, status_details) from `processing_status` (with the validation report's
    error), else from `Processed`."""
    native = raw.get("processing_status")
    if isinstance(native, str) and native in PROCESSING_STATUS:
        report = raw.get("validation_report")
        detail = report.get("error") if isinstance(report, dict) else None
        status = PROCESSING_STATUS[native]
        return status, (str(detail or f"Together's validation ended in {native}.") if status == "error" else None)
    processed = raw.get("Processed")
    return ("processed" if processed is True or processed is None else "uploaded"), None


def to_file(raw: JSON) -> JSON:
    status, details = _status(raw)
    extra: JSON = {}
    if details:
        extra["status_details"] = details
    if raw.get("FileType"):
        extra["file_type"] = raw["FileType"]
    if isinstance(raw.get("LineCount"), int):
        extra["line_count"] = raw["LineCount"]
    purpose = str(raw.get("purpose") or "fine-tune")
    return models.file(id=str(raw["id"]), bytes=int(raw.get("bytes") or 0), created_at=unix(raw.get("created_at")) or 0,
                       filename=str(raw.get("filename") or ""), purpose=ANSWER_PURPOSE.get(purpose, purpose),
                       status=status, **extra)


class ConvertedChunks:
    """OpenAI chat JSONL → Together's conversational JSONL, streamed. A line that Together cannot
    take becomes a 400 naming the line; ``error`` keeps it for the adapter, since the exception is
    raised inside the upstream request's body and may arrive wrapped."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.error: InvalidRequest | None = None
        self.bytes = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        from tunegate.data.converters import ConversionError, aconvert

        buffer = bytearray()
        try:
            async for line in aconvert(self._chunks, "together"):
                self.bytes += len(line)
                buffer += line
                if len(buffer) >= FLUSH_BYTES:  # one line per write would be many tiny chunks
                    yield bytes(buffer)
                    buffer.clear()
            if buffer:
                yield bytes(buffer)
        except ConversionError as exc:
            self.error = InvalidRequest(f"The training file cannot be converted to Together's format: line "
                                        f"{exc.line}: {exc.message}", param="file", code="invalid_training_file")
            raise self.error from None
