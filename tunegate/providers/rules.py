"""Dataset rules: the limits a provider puts on the files of a fine-tuning job, checked when the job is
created (``POST /v1/fine_tuning/jobs``), never at upload.

An upload is refused only for what makes a file unusable anywhere (``tunegate.data.validator``'s errors).
Whether 5 examples are enough depends on where the file goes and on the role it plays: OpenAI wants 10 in a
training file and none in a validation file; Together takes 1. Each provider declares its own numbers as
``Provider.dataset_rules`` (with the source of each in its ``MAPPING.md``); ``None`` means the provider
states no limit or none could be verified, and then the provider decides.

The facts checked come from the upload's validation report, recorded by the gateway: the managed file's
report, or the ``dataset`` registry row of a file uploaded to a provider through the gateway. A file id the
gateway has never validated is not guessed about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunegate.errors import InvalidRequest

# The two roles a file plays in a job, by the create field that names it.
ROLES = ("training_file", "validation_file")


@dataclass(frozen=True)
class DatasetRules:
    """One provider's published limits (for one base model, where they differ by model)."""

    min_training_examples: int | None = None
    max_training_examples: int | None = None
    min_validation_examples: int | None = None
    max_validation_examples: int | None = None
    max_file_bytes: int | None = None  # per file, as the provider stores it (after conversion)
    max_epochs: int | None = None  # the largest integer `n_epochs` the provider runs

    def bounds(self, role: str) -> tuple[int | None, int | None]:
        if role == "training_file":
            return self.min_training_examples, self.max_training_examples
        return self.min_validation_examples, self.max_validation_examples


NO_RULES = DatasetRules()


@dataclass(frozen=True)
class FileFacts:
    """What the gateway learnt about a file when it validated the upload."""

    examples: int
    bytes: int | None = None

    @classmethod
    def from_report(cls, report: Any, size: Any = None) -> FileFacts | None:
        """From a stored ``Report.to_dict()``; None when it holds no example count (nothing to check)."""
        stats = report.get("stats") if isinstance(report, dict) else None
        if not isinstance(stats, dict):
            return None
        examples = stats.get("examples")
        if not isinstance(examples, int) or isinstance(examples, bool):
            return None
        stored = size if isinstance(size, int) and not isinstance(size, bool) else stats.get("bytes")
        return cls(examples=examples, bytes=stored if isinstance(stored, int) else None)


def check_file(rules: DatasetRules, provider: str, role: str, file_id: str, facts: FileFacts) -> None:
    """A 400 naming the field when the file breaks the provider's rule for the role it plays."""
    low, high = rules.bounds(role)
    what = role.replace("_", " ").capitalize()
    if low is not None and facts.examples < low:
        raise InvalidRequest(f"{what} '{file_id}' has {facts.examples} example(s), but provider '{provider}' "
                             f"needs at least {low} in a {role.replace('_', ' ')}.", param=role,
                             code="invalid_n_examples")
    if high is not None and facts.examples > high:
        raise InvalidRequest(f"{what} '{file_id}' has {facts.examples} example(s), but provider '{provider}' "
                             f"takes at most {high} in a {role.replace('_', ' ')}.", param=role,
                             code="invalid_n_examples")
    if rules.max_file_bytes is not None and facts.bytes is not None and facts.bytes > rules.max_file_bytes:
        raise InvalidRequest(f"{what} '{file_id}' is {facts.bytes} bytes, but provider '{provider}' takes files "
                             f"of at most {rules.max_file_bytes} bytes.", param=role, code="file_too_large")


def check_epochs(rules: DatasetRules, provider: str, body: dict[str, Any]) -> None:
    """An integer ``n_epochs`` above the provider's maximum, top-level or under ``method.<type>``, is a 400."""
    if rules.max_epochs is None:
        return
    for param, hyper in _hyperparameters(body):
        epochs = hyper.get("n_epochs")
        if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > rules.max_epochs:
            raise InvalidRequest(f"'{param}.n_epochs' is {epochs}, but provider '{provider}' runs at most "
                                 f"{rules.max_epochs} epochs.", param=f"{param}.n_epochs",
                                 code="invalid_n_epochs")


def _hyperparameters(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(body.get("hyperparameters"), dict):
        found.append(("hyperparameters", body["hyperparameters"]))
    method = body.get("method")
    if isinstance(method, dict) and isinstance(method.get("type"), str):
        inner = method.get(method["type"])
        if isinstance(inner, dict) and isinstance(inner.get("hyperparameters"), dict):
            found.append((f"method.{method['type']}.hyperparameters", inner["hyperparameters"]))
    return found
