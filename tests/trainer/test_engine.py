"""In-process training runs on the tiny random model (CPU, a second or two each)."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tunegate.trainer import TrainingError, TrainSpec, run_training  # noqa: E402

from .conftest import sft_rows, write_jsonl  # noqa: E402

# lr 2e-3 and alpha 64 make LoRA overfit 10 examples on the tiny random model within 10 epochs
FAST = {"n_epochs": 10, "batch_size": 2, "learning_rate_multiplier": 10, "lora_alpha": 64}


def make_spec(tmp_path, model, train, name="run", **kw) -> TrainSpec:
    base = dict(
        job_id="ftjob-test",
        model=model,
        training_file=train,
        validation_file=None,
        method="supervised",
        hyperparameters=dict(FAST),
        seed=42,
        suffix="unit",
        output_dir=str(tmp_path / name),
    )
    base.update(kw)
    return TrainSpec(**base)


def run(spec, should_stop=None):
    events: list[dict] = []
    result = run_training(spec, events.append, should_stop)
    return result, events


def losses(events):
    return [e["data"]["train_loss"] for e in events if e["type"] == "metrics"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_supervised_overfits_and_adapter_loads(tmp_path, tiny_model, sft_file):
    spec = make_spec(tmp_path, tiny_model, sft_file, validation_file=sft_file)
    result, events = run(spec)

    messages = [e["message"] for e in events if e["type"] == "message"]
    assert messages[:3] == [
        "Validating training file: train.jsonl",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
    ]
    assert messages[-2:] == ["New fine-tuned model created", "The job has successfully completed"]
    assert sum(m.startswith("Checkpoint created at step") for m in messages) == 10

    ls = losses(events)
    assert len(ls) == result.total_steps == 50 and result.step == 50
    first, last = sum(ls[:5]) / 5, sum(ls[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert ls[0] == pytest.approx(math.log(512), rel=0.1)  # ~uniform over the 512-token vocab at start

    metrics = [e for e in events if e["type"] == "metrics"]
    assert metrics[0]["message"].startswith("Step 1/50: training loss=")
    assert {"step", "total_steps", "train_loss", "train_mean_token_accuracy", "valid_loss"} <= set(metrics[0]["data"])
    assert any(m["data"]["valid_loss"] is not None for m in metrics)

    progress = [e for e in events if e["type"] == "progress"]
    assert [p["step"] for p in progress] == list(range(1, 51))
    assert progress[-1]["trained_tokens"] == result.trained_tokens > 0
    assert all(isinstance(p["estimated_finish"], int) for p in progress)

    ckpts = [e for e in events if e["type"] == "checkpoint"]
    assert [c["step"] for c in ckpts] == list(range(5, 51, 5))
    assert set(ckpts[-1]["metrics"]) == {
        "step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
        "full_valid_loss", "full_valid_mean_token_accuracy",
    }
    assert ckpts[-1]["metrics"]["full_valid_loss"] < ckpts[0]["metrics"]["full_valid_loss"]
    assert all(os.path.isfile(os.path.join(c["path"], "adapter_model.safetensors")) for c in ckpts)
    assert result.checkpoints == [{k: c[k] for k in ("step", "path", "metrics")} for c in ckpts]

    assert result.fine_tuned_model == "ft:tiny-llama:unit:ftjob-test"
    assert result.hyperparameters["learning_rate"] == pytest.approx(2e-3)
    with open(result.metrics_csv) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert len(rows) == 51
    assert json.load(open(os.path.join(spec.output_dir, "result.json")))["fine_tuned_model"] == result.fine_tuned_model

    # the final adapter is a standard PEFT adapter
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(result.adapter_dir))
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    # the adapter changed the model: its loss on a training answer is lower than the base model's
    from tunegate.trainer.data import encode_supervised, load_examples

    enc = encode_supervised(tok, load_examples(sft_file, "supervised")[1])
    ids = torch.tensor([enc.input_ids])
    labels = torch.tensor([enc.labels])
    with torch.no_grad():
        tuned = model(input_ids=ids, labels=labels).loss.item()
        with model.disable_adapter():
            plain = model(input_ids=ids, labels=labels).loss.item()
    assert tuned < plain


def test_same_seed_same_losses(tmp_path, tiny_model, sft_file):
    hp = {"n_epochs": 2, "batch_size": 3, "learning_rate_multiplier": 5}
    a, ea = run(make_spec(tmp_path, tiny_model, sft_file, "a", hyperparameters=hp))
    b, eb = run(make_spec(tmp_path, tiny_model, sft_file, "b", hyperparameters=hp))
    c, ec = run(make_spec(tmp_path, tiny_model, sft_file, "c", hyperparameters=hp, seed=7))
    assert losses(ea) == losses(eb)
    assert a.trained_tokens == b.trained_tokens
    assert losses(ea) != losses(ec)


def test_pause_and_resume_matches_uninterrupted(tmp_path, tiny_model, sft_file):
    hp = {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 5}
    full, ef = run(make_spec(tmp_path, tiny_model, sft_file, "full", hyperparameters=hp))

    spec = make_spec(tmp_path, tiny_model, sft_file, "paused", hyperparameters=hp)
    seen: list[dict] = []

    def stop():
        return sum(e["type"] == "progress" for e in seen) >= 7  # mid-epoch 2

    paused = run_training(spec, seen.append, stop)
    assert paused.status == "paused" and paused.step == 7
    assert paused.resume_checkpoint and os.path.isfile(os.path.join(paused.resume_checkpoint, "optimizer.pt"))
    assert any(e["type"] == "paused" for e in seen)

    spec.resume_from = paused.resume_checkpoint
    resumed, er = run(spec)
    assert resumed.status == "succeeded" and resumed.step == full.step == 15
    assert losses(er) == pytest.approx(losses(ef)[7:], rel=1e-5)
    assert resumed.trained_tokens == full.trained_tokens
    assert [c["step"] for c in resumed.checkpoints] == [5, 10, 15]
    with open(resumed.metrics_csv) as f:
        assert [int(r[0]) for r in list(csv.reader(f))[1:]] == list(range(1, 16))


def test_dpo_runs_and_emits_metrics(tmp_path, tiny_model, dpo_file):
    spec = make_spec(
        tmp_path, tiny_model, dpo_file, method="dpo", validation_file=dpo_file,
        hyperparameters={"n_epochs": 5, "batch_size": 2, "learning_rate_multiplier": 20, "beta": 0.5},
    )
    result, events = run(spec)
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == result.total_steps == 25
    # LoRA starts as a no-op, so policy == reference and the first DPO loss is exactly log(2)
    assert metrics[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert {"train_reward_accuracy", "train_reward_margin"} <= set(metrics[0])
    ls = [m["train_loss"] for m in metrics]
    assert sum(ls[-5:]) / 5 < sum(ls[:5]) / 5
    assert metrics[-1]["valid_loss"] is not None
    assert result.hyperparameters["beta"] == 0.5
    assert os.path.isfile(os.path.join(result.adapter_dir, "adapter_model.safetensors"))
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [5, 10, 15, 20, 25]


def test_errors(tmp_path, tiny_model, sft_file, dpo_file):
    with pytest.raises(TrainingError) as ei:
        run(make_spec(tmp_path, "no-such-org/no-such-model-xyz", sft_file))
    assert ei.value.code == "model_not_found" and ei.value.param == "model"
    with pytest.raises(TrainingError) as ei:
        run(make_spec(tmp_path, tiny_model, dpo_file))  # DPO rows given to a supervised job
    assert ei.value.code == "invalid_training_file"
    bad_valid = write_jsonl(tmp_path / "v.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(TrainingError) as ei:
        run(make_spec(tmp_path, tiny_model, sft_file, validation_file=bad_valid))
    assert ei.value.code == "invalid_validation_file"
    with pytest.raises(TrainingError) as ei:
        run(make_spec(tmp_path, tiny_model, sft_file, resume_from=str(tmp_path)))
    assert ei.value.code == "invalid_checkpoint"


def test_auto_hyperparameters_and_long_examples(tmp_path, tiny_model):
    rows = sft_rows(4)
    rows[0]["messages"][-1]["content"] = "word " * 400  # longer than max_seq_length
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    spec = make_spec(
        tmp_path, tiny_model, train,
        hyperparameters={"n_epochs": 1, "batch_size": "auto", "learning_rate_multiplier": "auto", "max_seq_length": 64},
    )
    result, events = run(spec)
    assert result.hyperparameters["batch_size"] == 1 and result.total_steps == 4
    assert any(e["type"] == "message" and e["level"] == "warn" and "truncated" in e["message"] for e in events)
