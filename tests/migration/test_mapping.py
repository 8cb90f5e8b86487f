"""The per-backend mapping of an OpenAI job (hyperparameters.py, bases.py) and the dated tables."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from tunegate.migration.bases import BaseMapError, choose, parse_overrides
from tunegate.migration.hyperparameters import TARGETS, map_job
from tunegate.migration.tables import prices, retirements
from tunegate.providers import REGISTRY


def job(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "ftjob-1", "status": "succeeded", "model": "gpt-4o-mini-2024-07-18", "seed": 3,
        "fine_tuned_model": "ft:gpt-4o-mini-2024-07-18:acme:helpdesk:abc123", "metadata": {"team": "a"},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.8}}},
        "hyperparameters": {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.8}}
    return {**base, **over}


def test_every_target_is_a_gateway_provider_with_the_adapters_suffix_limit() -> None:
    # The table must not drift from the adapters it describes.
    for name, target in TARGETS.items():
        assert name in REGISTRY, name
        assert target.suffix_max == REGISTRY[name].suffix_max_length, name


def test_together_gets_the_absolute_rate_and_keeps_seed_but_not_metadata() -> None:
    m = map_job(job(), "together-ai", {})
    assert m.blockers == [] and m.model == "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
    assert m.learning_rate == pytest.approx(1.8e-5)
    assert m.body["method"]["supervised"]["hyperparameters"] == {
        "n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.8}
    assert m.body["seed"] == 3 and m.body["suffix"] == "helpdesk" and "metadata" not in m.body
    assert any("metadata ['team'] not carried" in n for n in m.notes)


def test_fireworks_refuses_dpo_and_drops_the_seed_out_loud() -> None:
    dpo = job(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}})
    m = map_job(dpo, "fireworks-ai", {})
    assert any("method 'dpo' is not available on fireworks-ai" in b for b in m.blockers)
    assert "seed" not in m.body and any("seed 3 not carried" in n for n in m.notes)


def test_reinforcement_carries_only_to_openai_and_unknown_hyperparameters_are_named() -> None:
    rft = job(method={"type": "reinforcement", "reinforcement": {"hyperparameters": {
        "reasoning_effort": "medium", "n_epochs": 2}}})
    assert map_job(rft, "openai", {}).blockers == []
    local = map_job(rft, "local", {})
    assert any("'reinforcement'" in b for b in local.blockers)
    assert any("reasoning_effort = 'medium' not carried" in n for n in local.notes)


def test_bedrock_nova_takes_no_batch_size_and_clamps_epochs() -> None:
    m = map_job(job(method={"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 9, "batch_size": 8, "learning_rate_multiplier": 2}}}), "bedrock", {})
    hp = m.body["method"]["supervised"]["hyperparameters"]
    assert m.model == "amazon.nova-micro-v1:0:128k" and hp["n_epochs"] == 5 and "batch_size" not in hp
    assert m.learning_rate == pytest.approx(2e-5)  # 2 × Nova's default 1e-5
    assert any("outside bedrock's 1–5" in n for n in m.notes) and any("batch_size 8" in n for n in m.notes)


def test_auto_values_stay_auto_and_say_so() -> None:
    m = map_job(job(method={"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": "auto", "learning_rate_multiplier": "auto"}}}), "local", {})
    assert m.body["method"]["supervised"]["hyperparameters"] == {} and m.n_epochs is None
    assert any("auto on OpenAI" in n for n in m.notes)


def test_base_models_defaults_overrides_and_continued_fine_tunes() -> None:
    assert choose("gpt-4o-2024-08-06", "together-ai", {}).model == "meta-llama/Meta-Llama-3.1-70B-Instruct-Reference"
    assert choose("gpt-4o-mini-2024-07-18", "azure-openai", {}).model == "gpt-4o-mini-2024-07-18"
    assert choose("gpt-4o-mini-2024-07-18", "local", {"*": "/m/tiny"}).model == "/m/tiny"
    assert choose("babbage-002", "together-ai", {}).model is None
    cont = map_job(job(model="ft:gpt-4o-mini-2024-07-18:acme:v1:zz9"), "together-ai",
                   parse_overrides(["gpt-4o-mini-2024-07-18=org/my-8b"]))
    assert cont.model == "org/my-8b" and any("continued from the tuned model" in n for n in cont.notes)
    with pytest.raises(BaseMapError):
        parse_overrides(["gpt-4o-mini"])


def test_retirement_table_rows_are_dated_and_sourced() -> None:
    table = retirements()
    mini = table.lookup("gpt-4o-mini")
    assert mini is not None and mini.model == "gpt-4o-mini-2024-07-18" and mini.shutdown == date(2027, 1, 14)
    assert mini.days_left(date(2026, 12, 1)) == 44
    for row in table.by_model.values():
        assert row.source.startswith("https://") and date.fromisoformat(row.checked)
    assert table.platform is not None and table.platform.no_new_jobs_after == date(2027, 1, 6)


def test_price_rows_match_the_most_specific_pattern_first() -> None:
    p = prices()
    big_dpo = p.price("together-ai", "meta-llama/Meta-Llama-3.1-70B-Instruct-Reference", "dpo")
    assert big_dpo is not None and big_dpo.usd_per_1m_tokens == 7.25
    small = p.price("together-ai", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", "supervised")
    assert small is not None and small.usd_per_1m_tokens == 0.48
    assert p.price("bedrock", "amazon.nova-micro-v1:0:128k", "supervised") is None
    local = p.price("local", "/models/tiny", "supervised")
    assert local is not None and local.usd_per_1m_tokens == 0 and local.verified
    for row in p.prices:
        assert row.source and date.fromisoformat(row.checked)
