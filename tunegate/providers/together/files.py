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


def together_purpose(purpose: str) -> str:
    try:
        return UPLOAD_PURPOSE[purpose]
    except KeyError:
        raise InvalidRequest(f"Together accepts files for the purposes {', '.join(sorted(UPLOAD_PURPOSE))}, "
                             f"not {purpose!r}.", param="purpose", code="unsupported_parameter") from None


def file_type(filename: str) -> str:
    """Together's FileType from the file's extension (JSONL unless it says csv or parquet)."""
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return FILE_TYPES.get(ext, "jsonl")


def to_file(raw: JSON) -> JSON:
    processed = raw.get("Processed")
    status = "processed" if processed is True or processed is None else "uploaded"
    extra: JSON = {}
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
