"""The provider registry: name → adapter. Adding a provider is one line here and one folder."""

from __future__ import annotations

from tunegate.providers.azure_openai import AzureOpenAI
from tunegate.providers.base import Provider
from tunegate.providers.bedrock import Bedrock
from tunegate.providers.fireworks import Fireworks
from tunegate.providers.local import Local
from tunegate.providers.mistral import Mistral
from tunegate.providers.openai import OpenAI
from tunegate.providers.together import Together
from tunegate.providers.tunegate import Tunegate
from tunegate.providers.vertex_ai import VertexAI

REGISTRY: dict[str, Provider] = {
    p.name: p
    for p in (
        OpenAI(),
        Tunegate(),
        AzureOpenAI(),
        Bedrock(),
        Fireworks(),
        Together(),
        Mistral(),
        VertexAI(),
        Local(),
    )
}
