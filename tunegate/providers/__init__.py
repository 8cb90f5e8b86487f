"""The provider registry: name → adapter. Adding a provider is one line here and one folder.

Names are Portkey's provider slugs (``together-ai``, ``fireworks-ai``, ``mistral-ai`` …); each adapter may
accept older short names as ``aliases``. Everything that takes a provider name from outside (headers,
configs, connections, the CLI, the dashboard) goes through :func:`provider_named`, so an object keeps
one canonical name whichever alias created it.
"""

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


def _by_every_name() -> dict[str, Provider]:
    named: dict[str, Provider] = {}
    for provider in REGISTRY.values():
        for name in (provider.name, *provider.aliases):
            if name in named:  # two adapters answering to one name would route requests by import order
                raise RuntimeError(f"provider name {name!r} is claimed twice")
            named[name] = provider
    return named


_NAMED = _by_every_name()


def provider_named(name: str) -> Provider | None:
    """The adapter a name (canonical or alias, any case, surrounding spaces ignored) stands for."""
    return _NAMED.get(name.strip().lower())


def canonical_name(name: str) -> str:
    """The canonical spelling of a provider name; an unknown name is returned as given."""
    provider = provider_named(name)
    return provider.name if provider is not None else name


def known_names() -> str:
    """The names for an error message: ``together-ai (or together), …``."""
    return ", ".join(p.name + (f" (or {', '.join(p.aliases)})" if p.aliases else "")
                     for p in sorted(REGISTRY.values(), key=lambda p: p.name))
