"""OpenAI: the reference. Requests and answers pass through unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from tunegate.providers.openai_compatible import OpenAICompatible

if TYPE_CHECKING:
    from tunegate.context import RequestContext


class OpenAI(OpenAICompatible):
    name = "openai"
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
