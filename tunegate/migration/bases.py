"""Which base model a job trained on OpenAI starts from on another backend.

The defaults pair each OpenAI family with a model of the same class on the target: the small, cheap
models (gpt-4o-mini, gpt-4.1-mini/nano, gpt-3.5-turbo) with an 8B-class instruct model, the large ones
(gpt-4o, gpt-4.1) with a 70B-class one. They are starting points: a team that has compared models picks
its own with ``--base SOURCE=TARGET`` (``*=TARGET`` for every job), and the reasons are in
``docs/migrating-from-openai.md``. A model with no default and no ``--base`` is reported, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

SMALL = "small"
LARGE = "large"

# Prefixes of OpenAI base model ids, longest first so `gpt-4o-mini` is not read as `gpt-4o`.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("gpt-4o-mini", SMALL),
    ("gpt-4.1-mini", SMALL),
    ("gpt-4.1-nano", SMALL),
    ("gpt-3.5-turbo", SMALL),
    ("gpt-4o", LARGE),
    ("gpt-4.1", LARGE),
)

# target backend → class → base model. Where each name comes from:
#   together-ai: Together's own examples use meta-llama/Meta-Llama-3.1-8B-Instruct-Reference
#     (docs.together.ai "LoRA fine-tuning" and estimate-price pages); the 70B "-Reference" twin for large.
#   fireworks-ai: accounts/fireworks/models/llama-v3p1-{8b,70b}-instruct (the Fireworks model catalogue;
#     the 8B one is what tests/providers/test_fireworks.py trains).
#   bedrock: Amazon Nova Micro / Lite, the text models tunegate maps (tunegate/providers/bedrock/jobs.py
#     FAMILIES), with their context-length variants as Bedrock names the tunable ones.
#   vertex-ai: gemini-2.5-flash (tunegate/providers/vertex_ai/MAPPING.md's example); which Gemini models are
#     tunable changes often: unverified for today.
#   mistral-ai: open-mistral-nemo / mistral-small-latest (Mistral's fine-tunable models when its API was
#     current; the fine-tuning API is deprecated, see the README).
#   azure-openai: the same OpenAI model, where Azure still trains it (its own retirement dates apply).
#   local: Qwen2.5 instruct models small enough for one GPU with LoRA; any Hugging Face id or a model
#     directory under the gateway's local_model_roots works with --base.
DEFAULTS: dict[str, dict[str, str]] = {
    "together-ai": {SMALL: "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
                    LARGE: "meta-llama/Meta-Llama-3.1-70B-Instruct-Reference"},
    "fireworks-ai": {SMALL: "accounts/fireworks/models/llama-v3p1-8b-instruct",
                     LARGE: "accounts/fireworks/models/llama-v3p1-70b-instruct"},
    "bedrock": {SMALL: "amazon.nova-micro-v1:0:128k", LARGE: "amazon.nova-lite-v1:0:300k"},
    "vertex-ai": {SMALL: "gemini-2.5-flash", LARGE: "gemini-2.5-flash"},
    "mistral-ai": {SMALL: "open-mistral-nemo", LARGE: "mistral-small-latest"},
    "local": {SMALL: "Qwen/Qwen2.5-1.5B-Instruct", LARGE: "Qwen/Qwen2.5-7B-Instruct"},
}
SAME_MODEL = frozenset({"openai", "azure-openai"})


class BaseMapError(ValueError):
    pass


@dataclass(frozen=True)
class BaseChoice:
    model: str | None
    reason: str  # why this model (or why none)


def base_of(model: str) -> tuple[str, bool]:
    """(the base model, whether the job continued from a fine-tuned model): OpenAI names a continued
    fine-tune's starting point `ft:<base>:<org>:<suffix>:<id>`."""
    if model.startswith("ft:"):
        parts = model.split(":")
        return (parts[1] if len(parts) > 1 and parts[1] else model), True
    return model, False


def family(model: str) -> str | None:
    for prefix, cls in FAMILIES:
        if model == prefix or model.startswith(prefix + "-"):
            return cls
    return None


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``--base SOURCE=TARGET`` (repeatable); ``*`` as SOURCE matches every job."""
    out: dict[str, str] = {}
    for item in items:
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise BaseMapError(f"--base takes SOURCE=TARGET (e.g. gpt-4o-mini-2024-07-18=meta-llama/…), got {item!r}")
        out[source.strip()] = target.strip()
    return out


def choose(model: str, target: str, overrides: dict[str, str]) -> BaseChoice:
    """The target's base model for a job that trained ``model`` on OpenAI."""
    base, _ = base_of(model)
    for key in (model, base):
        if key in overrides:
            return BaseChoice(overrides[key], f"--base {key}={overrides[key]}")
    if "*" in overrides:
        return BaseChoice(overrides["*"], f"--base *={overrides['*']}")
    if target in SAME_MODEL:
        return BaseChoice(base, f"{target} trains OpenAI's own models")
    cls = family(base)
    default = DEFAULTS.get(target, {}).get(cls or "")
    if default is None:
        why = f"no default for {base!r} on {target}" if cls else f"{base!r} is not a known OpenAI model family"
        return BaseChoice(None, f"{why}: pass --base {base}=MODEL")
    return BaseChoice(default, f"default for {'small' if cls == SMALL else 'large'} OpenAI models on {target}")
