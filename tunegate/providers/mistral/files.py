"""Files: Mistral's ``UploadFileOut`` / ``RetrieveFileOut`` / ``FileSchema`` → OpenAI's file object, and
the upload's purpose and training data. See MAPPING.md."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tunegate import models
from tunegate.errors import InvalidRequest
from tunegate.providers.base import JSON

from .jobs import unix

# OpenAI purpose → Mistral's FilePurpose. Mistral's own `ocr` is accepted as is.
PURPOSES = {"fine-tune": "fine-tune", "batch": "batch", "ocr": "ocr"}
CONVERTER_TARGET = "mistral"


def native_purpose(purpose: str) -> str:
    try:
        return PURPOSES[purpose]
    except KeyError:
        raise InvalidRequest(f"Mistral files have no purpose '{purpose}' (it accepts "
                             f"{', '.join(sorted(PURPOSES))}).", param="purpose",
                             code="unsupported_parameter") from None


def check_fields(fields: dict[str, str]) -> None:
    """Form fields beyond purpose and file: OpenAI's expires_after has no Mistral equivalent whose unit
    is documented (Mistral's upload `expiry` is an untyped integer), so it is refused."""
    for name in fields:
        param = "expires_after" if name.startswith("expires_after") else name
        raise InvalidRequest(f"Mistral uploads do not accept '{name}'.", param=param, code="unsupported_parameter")


async def training_data(chunks: AsyncIterator[bytes], errors: list[BaseException]) -> AsyncIterator[bytes]:
    """OpenAI chat JSONL → Mistral's, line by line (tunegate.data.converters, target 'mistral'). A line
    Mistral cannot take becomes a 400 naming it; the error is also kept in ``errors`` because the HTTP
    client may wrap what a body stream raises."""
    from tunegate.data.converters import ConversionError, aconvert

    try:
        async for line in aconvert(chunks, CONVERTER_TARGET):
            yield line
    except ConversionError as exc:
        err = InvalidRequest(f"The training file cannot be sent to Mistral: line {exc.line}: {exc.message}",
                             param="file", code="invalid_training_file")
        errors.append(err)
        raise err from None


def to_file(raw: JSON) -> JSON:
    bytes_ = raw.get("bytes")
    extra: JSON = {}
    for key in ("num_lines", "sample_type", "source", "mimetype"):
        if raw.get(key) is not None:
            extra[key] = raw[key]
    return models.file(id=str(raw.get("id")), bytes=bytes_ if isinstance(bytes_, int) else 0,
                       created_at=unix(raw.get("created_at")) or 0, filename=str(raw.get("filename") or ""),
                       purpose=str(raw.get("purpose") or ""), status="processed",
                       expires_at=unix(raw.get("expires_at")), **extra)
