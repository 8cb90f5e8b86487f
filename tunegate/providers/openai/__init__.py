"""OpenAI: the reference. Requests and answers pass through unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from tunegate.providers.openai.chat import OpenAIModels
from tunegate.providers.openai_compatible import OpenAICompatible
from tunegate.providers.rules import DatasetRules

# shared/specs/openai-finetuning-contract.md: at least 10 examples in a training file (the documented
# minimum; OpenAI's own answer is a job failed with code invalid_n_examples), files up to 512 MB,
# n_epochs 1..50. Validation files have no published minimum.
OPENAI_RULES = DatasetRules(min_training_examples=10, max_file_bytes=512 * 1024**2, max_epochs=50)

if TYPE_CHECKING:
    from tunegate.context import RequestContext


class OpenAI(OpenAIModels, OpenAICompatible):
    name = "openai"
    dataset_rules = OPENAI_RULES
    default_base_url = "https://api.openai.com/v1"
    suffix_max_length: ClassVar[int] = 64  # CreateFineTuningJobRequest.suffix: maxLength 64

    def headers(self, ctx: RequestContext) -> dict[str, str]:
        headers = self.auth_headers(ctx)
        # x-portkey-openai-organization / -project (or the connection's options) become OpenAI's headers.
        if org := ctx.option("openai_organization"):
            headers["OpenAI-Organization"] = org
        if project := ctx.option("openai_project"):
            headers["OpenAI-Project"] = project
        return headers
