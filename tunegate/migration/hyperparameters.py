"""An OpenAI job's settings → the create body for another backend, with every loss written down.

The body stays in OpenAI's shape, since the gateway's adapters take that shape on every backend and do the
native mapping themselves (``tunegate/providers/<name>/MAPPING.md``). What this module adds is what the
adapters cannot know: what the *source* job asked for, and what of it will not survive the move. Each
difference becomes a note (the job is still replayed, changed as the note says) or a blocker (it is not).

``learning_rate_multiplier`` is carried as the multiplier; a backend that wants an absolute rate gets
multiplier × its documented default rate from the gateway's adapter. The constants are imported from those
adapters, so the rate printed here is the rate the adapter sends:

- together-ai: 1e-5, ``POST /fine-tunes`` ``learning_rate`` default (together-openapi.yaml; together/jobs.py)
- fireworks-ai: 1e-4, the SFT job's default ``learningRate`` (fireworks/jobs.py, MAPPING.md)
- mistral-ai: 1e-4, ``TrainingParameters.learning_rate`` default (mistral-openapi.yaml; mistral/jobs.py)
- bedrock: per model family, e.g. Nova 1e-5, Llama 1e-4 (Bedrock's documented defaults; bedrock/jobs.py);
  Claude 3 Haiku takes a multiplier as is
- local: 2e-4 supervised, 5e-5 DPO (tunegate/trainer/spec.py ``BASE_LEARNING_RATE``)
- openai, azure-openai, vertex-ai: take a multiplier themselves (``learningRateMultiplier`` on Vertex)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunegate.providers.bedrock.jobs import family as bedrock_family
from tunegate.providers.fireworks.jobs import BASE_LEARNING_RATE as FIREWORKS_RATE
from tunegate.providers.mistral.jobs import BASE_LEARNING_RATE as MISTRAL_RATE
from tunegate.providers.together.jobs import BASE_LEARNING_RATE as TOGETHER_RATE
from tunegate.trainer.spec import BASE_LEARNING_RATE as LOCAL_RATES

from .bases import base_of, choose

OPENAI_HP = ("n_epochs", "batch_size", "learning_rate_multiplier")


@dataclass(frozen=True)
class Target:
    """What one backend can take of an OpenAI job (each field's source: the adapter named in its MAPPING.md)."""

    name: str
    methods: frozenset[str]
    suffix_max: int
    seed: bool = True
    metadata: bool = True
    beta: bool = True  # takes DPO's beta
    # The absolute rate a multiplier of 1 means, per (model, method); None: the backend takes a multiplier.
    rate: Callable[[str, str], float | None] = lambda model, method: None
    batch: Callable[[str], tuple[int, int] | None] = lambda model: (1, 1_000_000)  # None: not settable
    epochs: Callable[[str], tuple[int, int]] = lambda model: (1, 1_000)
    # The tunegate.data.converters target the gateway converts uploads to (None: OpenAI's format as is).
    converter: Callable[[str, str], str | None] = lambda model, method: None
    default_epochs: Callable[[str], int] = lambda model: 1  # for estimates when the job says "auto"
    bills_validation: bool = False  # validation tokens are billed (Together: n_evals × validation tokens)


def _bedrock_rate(model: str, method: str) -> float | None:
    fam = bedrock_family(model)
    return fam.base_learning_rate if fam else None


def _bedrock_batch(model: str) -> tuple[int, int] | None:
    fam = bedrock_family(model)
    return fam.batch if fam else None


def _bedrock_epochs(model: str) -> tuple[int, int]:
    fam = bedrock_family(model)
    return fam.epochs if fam and fam.epochs else (1, 1_000)


def _bedrock_converter(model: str, method: str) -> str | None:
    fam = bedrock_family(model)
    return fam.data_format if fam else "bedrock-conversation-2024"


def _bedrock_default_epochs(model: str) -> int:
    fam = bedrock_family(model)  # Nova and Titan Premier: 2; Llama, Titan Lite/Express: 5; Claude 3 Haiku: 2
    return 5 if fam and fam.name in ("llama", "titan") else 2


TARGETS: dict[str, Target] = {
    "openai": Target("openai", frozenset({"supervised", "dpo", "reinforcement"}), 64, default_epochs=lambda m: 3),
    # Azure's GA surface (api-version 2024-10-21) has no metadata and no method but supervised; DPO needs
    # x-portkey-azure-api-version: v1 (azure_openai/MAPPING.md).
    "azure-openai": Target("azure-openai", frozenset({"supervised", "dpo"}), 64, metadata=False,
                           default_epochs=lambda m: 3),
    "bedrock": Target("bedrock", frozenset({"supervised"}), 54, seed=False, beta=False, rate=_bedrock_rate,
                      batch=_bedrock_batch, epochs=_bedrock_epochs, converter=_bedrock_converter,
                      default_epochs=_bedrock_default_epochs),
    "vertex-ai": Target("vertex-ai", frozenset({"supervised", "dpo"}), 128, seed=False,
                        converter=lambda m, k: "vertex-gemini-preference" if k == "dpo" else "vertex-gemini"),
    "together-ai": Target("together-ai", frozenset({"supervised", "dpo"}), 40, metadata=False,
                          rate=lambda m, k: TOGETHER_RATE, converter=lambda m, k: "together", bills_validation=True),
    "fireworks-ai": Target("fireworks-ai", frozenset({"supervised"}), 40, seed=False, metadata=False, beta=False,
                           rate=lambda m, k: FIREWORKS_RATE, converter=lambda m, k: "fireworks"),
    "mistral-ai": Target("mistral-ai", frozenset({"supervised"}), 18, seed=False, metadata=False, beta=False,
                         rate=lambda m, k: MISTRAL_RATE, batch=lambda m: None, converter=lambda m, k: "mistral"),
    "local": Target("local", frozenset({"supervised", "dpo"}), 64, rate=lambda m, k: LOCAL_RATES.get(k),
                    default_epochs=lambda m: 3),
}


@dataclass
class Mapped:
    """One job, mapped onto one backend."""

    source_job: str
    target: str
    method: str
    model: str | None
    body: dict[str, Any]  # the create body without file ids (the replay adds the target's)
    notes: list[str] = field(default_factory=list)  # what changed; the job is still replayed
    blockers: list[str] = field(default_factory=list)  # why it cannot be replayed
    learning_rate: float | None = None  # the absolute rate the target will use, when it wants one
    n_epochs: int | None = None  # None: the target's choice ("auto")

    def to_dict(self) -> dict[str, Any]:
        return {"source_job": self.source_job, "target": self.target, "method": self.method, "model": self.model,
                "body": self.body, "learning_rate": self.learning_rate, "n_epochs": self.n_epochs,
                "notes": self.notes, "blockers": self.blockers}


def source_method(job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(method type, hyperparameters) of an OpenAI job: ``method.<type>.hyperparameters`` first, the
    deprecated top-level ``hyperparameters`` for jobs from before ``method`` existed."""
    method = _obj(job.get("method"))
    kind = str(method.get("type") or "supervised")
    hp = _obj(_obj(method.get(kind)).get("hyperparameters"))
    return kind, dict(hp or _obj(job.get("hyperparameters")))


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def source_suffix(job: dict[str, Any]) -> tuple[str | None, str]:
    """The suffix a job was created with, and where it was read. The job object has no suffix field (only
    ``user_provided_suffix`` in newer answers); the tuned model's name ``ft:<base>:<org>:<suffix>:<id>``
    carries it otherwise."""
    if isinstance(job.get("user_provided_suffix"), str) and job["user_provided_suffix"]:
        return job["user_provided_suffix"], "user_provided_suffix"
    name = job.get("fine_tuned_model")
    if isinstance(name, str) and name.startswith("ft:"):
        parts = name.split(":")
        if len(parts) >= 5 and parts[3]:
            return parts[3], "the fine-tuned model's name"
    return None, "unknown"


def _auto(value: Any) -> bool:
    return value is None or value == "auto"


def map_job(job: dict[str, Any], target_name: str, overrides: dict[str, str]) -> Mapped:
    target = TARGETS.get(target_name)
    kind, hp = source_method(job)
    out = Mapped(source_job=str(job.get("id")), target=target_name, method=kind, model=None, body={})
    if target is None:
        out.blockers.append(f"unknown target backend {target_name!r}; known: {', '.join(sorted(TARGETS))}")
        return out
    base, continued = base_of(str(job.get("model") or ""))
    choice = choose(str(job.get("model") or ""), target_name, overrides)
    out.model = choice.model
    if choice.model is None:
        out.blockers.append(f"no base model: {choice.reason}")
    elif choice.model != base:
        out.notes.append(f"base model {base} → {choice.model} ({choice.reason})")
    if continued:
        out.notes.append(f"the source job continued from the tuned model {job.get('model')}; the new job starts "
                         f"from the base model, without that earlier training")
    if kind not in target.methods:
        out.blockers.append(f"method {kind!r} is not available on {target_name} "
                            f"(it trains: {', '.join(sorted(target.methods))})")
    model = choice.model or ""
    carried = _hyperparameters(hp, kind, model, target, out)
    out.body = {"model": choice.model, "method": {"type": kind, kind: {"hyperparameters": carried}}}
    _suffix(job, target, out)
    _seed_and_metadata(job, target, out)
    return out


def _hyperparameters(hp: dict[str, Any], kind: str, model: str, target: Target, out: Mapped) -> dict[str, Any]:
    carried: dict[str, Any] = {}
    epochs = hp.get("n_epochs")
    if not _auto(epochs) and isinstance(epochs, int):
        low, high = target.epochs(model)
        value = min(max(epochs, low), high)
        if value != epochs:
            out.notes.append(f"n_epochs {epochs} is outside {target.name}'s {low}–{high} for {model}: sent as {value}")
        carried["n_epochs"] = out.n_epochs = value
    batch = hp.get("batch_size")
    if not _auto(batch):
        bounds = target.batch(model)
        if bounds is None:
            out.notes.append(f"batch_size {batch} not carried: {target.name} sets its own batch size for {model}")
        elif isinstance(batch, int) and not bounds[0] <= batch <= bounds[1]:
            out.notes.append(f"batch_size {batch} not carried: {target.name} takes {bounds[0]}–{bounds[1]} for "
                             f"{model}; its default applies")
        else:
            carried["batch_size"] = batch
    _rate(hp.get("learning_rate_multiplier"), kind, model, target, carried, out)
    if kind == "dpo" and not _auto(hp.get("beta")):
        if target.beta:
            carried["beta"] = hp["beta"]
        else:
            out.notes.append(f"beta {hp['beta']} not carried: {target.name} has no DPO beta")
    dropped = sorted(k for k, v in hp.items() if k not in (*OPENAI_HP, "beta") and not _auto(v))
    for name in dropped:
        out.notes.append(f"{name} = {hp[name]!r} not carried: {target.name} has no equivalent in tunegate's mapping")
    return carried


def _rate(lrm: Any, kind: str, model: str, target: Target, carried: dict[str, Any], out: Mapped) -> None:
    if _auto(lrm):
        out.notes.append(f"learning_rate_multiplier was auto on OpenAI: {target.name}'s default rate applies")
        return
    if isinstance(lrm, bool) or not isinstance(lrm, int | float):
        out.notes.append(f"learning_rate_multiplier {lrm!r} is not a number: not carried")
        return
    carried["learning_rate_multiplier"] = lrm
    base_rate = target.rate(model, kind)
    if base_rate is not None:
        out.learning_rate = float(f"{lrm * base_rate:.6g}")
        out.notes.append(f"learning_rate_multiplier {lrm:g} → learning_rate {out.learning_rate:g} "
                         f"({lrm:g} × {target.name}'s default {base_rate:g})")


def _suffix(job: dict[str, Any], target: Target, out: Mapped) -> None:
    suffix, where = source_suffix(job)
    if suffix is None:
        if job.get("fine_tuned_model") is None and job.get("status") != "succeeded":
            out.notes.append("suffix unknown: the job has no fine-tuned model name to read it from")
        return
    if len(suffix) > target.suffix_max:
        short = suffix[: target.suffix_max]
        out.notes.append(f"suffix {suffix!r} ({len(suffix)} characters, from {where}) is longer than "
                         f"{target.name}'s {target.suffix_max}: sent as {short!r}")
        suffix = short
    out.body["suffix"] = suffix


def _seed_and_metadata(job: dict[str, Any], target: Target, out: Mapped) -> None:
    seed = job.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        if target.seed:
            out.body["seed"] = seed
        else:
            out.notes.append(f"seed {seed} not carried: {target.name} takes no seed (the run is not reproducible)")
    metadata = job.get("metadata")
    if isinstance(metadata, dict) and metadata:
        if target.metadata:
            out.body["metadata"] = metadata
        else:
            out.notes.append(f"metadata {sorted(metadata)} not carried: {target.name} jobs have no metadata")
    if job.get("integrations"):
        kinds = sorted({str(i.get("type")) for i in job["integrations"] if isinstance(i, dict)})
        out.notes.append(f"integrations {kinds} not carried: they need the target's own credentials "
                         "(add them to the job yourself)")
