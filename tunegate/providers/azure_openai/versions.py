"""What each Azure OpenAI api-version offers, read from Azure/azure-rest-api-specs
(specification/cognitiveservices/data-plane/AzureOpenAI/authoring/{stable,preview}/<version>/azureopenai.json)
and the v1 spec (specification/ai/data-plane/OpenAI.v1/azure-v1-v1-generated.yaml). MAPPING.md lists the
commit each row was checked against.

Three surfaces:
- ``v1`` / ``preview``: ``{endpoint}/openai/v1``, OpenAI's own shapes; everything passes through.
- dated GA (``2024-10-21`` and older stable versions): ``{endpoint}/openai?api-version=…``, the GA rules.
- dated previews (``2025-04-01-preview`` …) and any later dated version: the authoring surface with what
  that version's spec adds (``method``, ``integrations``, pause/resume, file paging, ``trainingType``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GA_API_VERSION = "2024-10-21"
V1_VERSIONS = ("v1", "preview")  # api-version values that select the /openai/v1 surface

# First dated version whose spec has each feature (previews named by their date).
METHOD_SINCE = "2025-02-01"  # FineTuningJobCreation.method (supervised, dpo), integrations
PAUSE_SINCE = "2025-04-01"  # /fine_tuning/jobs/{id}/pause and /resume
FILE_PAGING_SINCE = "2025-04-01"  # GET /files ?limit, ?after, ?order
TRAINING_TYPE_SINCE = "2025-04-01"  # `trainingType` (Azure's fine-tuning how-to names this version)

_DATED = re.compile(r"(\d{4}-\d{2}-\d{2})(-preview)?")

GA_CREATE_FIELDS = frozenset({"model", "training_file", "validation_file", "hyperparameters", "suffix", "seed"})
PREVIEW_CREATE_FIELDS = GA_CREATE_FIELDS | {"integrations", "method"}


@dataclass(frozen=True)
class Surface:
    """The rules of one api-version."""

    version: str
    v1: bool  # the OpenAI-compatible /openai/v1 surface
    create_fields: frozenset[str] | None  # None: every field passes
    methods: frozenset[str] | None  # fine-tuning methods accepted in `method`; None: any
    pause_resume: bool
    file_paging: bool  # GET /files takes limit/after upstream (else the gateway pages)
    training_type: bool
    job_delete: bool  # DELETE /fine_tuning/jobs/{id}
    suffix_max_length: int
    numeric_hyperparameters: bool  # n_epochs/batch_size/learning_rate_multiplier are numbers ("auto" is not)

    @property
    def ga(self) -> bool:
        return self.create_fields == GA_CREATE_FIELDS


def surface(version: str) -> Surface:
    """The rules for an api-version (its grammar is checked before: option_patterns)."""
    if version in V1_VERSIONS:
        # v1 spec: CreateFineTuningJobRequest is OpenAI's (suffix maxLength 64, "auto" allowed); it has no
        # DELETE on jobs.
        return Surface(version, True, None, None, True, True, True, False, 64, False)
    match = _DATED.fullmatch(version)
    date = match.group(1) if match else GA_API_VERSION
    preview = bool(match and match.group(2))
    if not preview and date <= GA_API_VERSION or preview and date < METHOD_SINCE:
        # GA, and the previews before `method` existed: GA's FineTuningJobCreation.
        return Surface(version, False, GA_CREATE_FIELDS, frozenset({"supervised"}), False, False, False, True, 40,
                       True)
    # Every authoring spec: "The suffix can contain up to 40 characters"; hyperparameters are int32/double.
    return Surface(version, False, PREVIEW_CREATE_FIELDS, frozenset({"supervised", "dpo"}), date >= PAUSE_SINCE,
                   date >= FILE_PAGING_SINCE, date >= TRAINING_TYPE_SINCE, True, 40, True)
