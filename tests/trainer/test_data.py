"""File validation and label masking (needs transformers for the tokenizer, not a model)."""

from __future__ import annotations

import json

import pytest

from tunegate.trainer.data import IGNORE_INDEX, encode_dpo, encode_supervised, load_examples
from tunegate.trainer.spec import TrainingError

from .conftest import dpo_rows, write_jsonl

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer():
    from tunegate.trainer.tiny import build_tokenizer

    return build_tokenizer()


def _labelled_text(tok, enc):
    return tok.decode([t for t in enc.labels if t != IGNORE_INDEX])


def test_labels_only_on_assistant_turns(tokenizer, tmp_path):
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Lyon", "weight": 0},
            {"role": "user", "content": "Wrong. Again?"},
            {"role": "assistant", "content": "Paris"},
        ]
    }
    ex = load_examples(write_jsonl(tmp_path / "t.jsonl", [row]), "supervised")[0]
    enc = encode_supervised(tokenizer, ex)
    assert len(enc.labels) == len(enc.input_ids)
    # exactly the second assistant turn (content + end-of-turn marker) is trained on
    assert _labelled_text(tokenizer, enc) == "Paris<|im_end|>\n"
    for tid, lab in zip(enc.input_ids, enc.labels, strict=True):
        assert lab in (tid, IGNORE_INDEX)
    # the role header "<|im_start|>assistant\n" of the trained turn is masked too
    full = tokenizer.decode(enc.input_ids)
    assert full.endswith("<|im_start|>assistant\nParis<|im_end|>\n")
    first = enc.labels.index(next(x for x in enc.labels if x != IGNORE_INDEX))
    assert tokenizer.decode(enc.input_ids[:first]).endswith("<|im_start|>assistant\n")
    # weight 0 on the only assistant message leaves nothing to train: rejected at validation time
    row0 = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]}
    with pytest.raises(TrainingError) as ei:
        load_examples(write_jsonl(tmp_path / "w0.jsonl", [row0]), "supervised")
    assert ei.value.code == "invalid_training_file"


def test_content_parts_and_truncation(tokenizer, tmp_path):
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello! " * 40},
        ]
    }
    ex = load_examples(write_jsonl(tmp_path / "t.jsonl", [row]), "supervised")[0]
    assert ex["messages"][0]["content"] == "Hi there"
    enc = encode_supervised(tokenizer, ex, max_length=20)
    assert enc.truncated and len(enc.input_ids) == 20


def test_dpo_labels_only_completion(tokenizer, tmp_path):
    ex = load_examples(write_jsonl(tmp_path / "d.jsonl", dpo_rows(1)), "dpo")[0]
    chosen, rejected = encode_dpo(tokenizer, ex)
    assert _labelled_text(tokenizer, chosen) == "4<|im_end|>\n"
    assert _labelled_text(tokenizer, rejected) == "I don't know.<|im_end|>\n"


@pytest.mark.parametrize(
    "line,fragment",
    [
        ("not json", "Line 1: invalid JSON"),
        (json.dumps([1, 2]), "must be a JSON object"),
        (json.dumps({"messages": []}), "non-empty list"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "role"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "no assistant message"),
        (json.dumps({"messages": [{"role": "user", "content": "x", "weight": 0}, {"role": "assistant", "content": "y"}]}),
         "only allowed on assistant"),
    ],
)
def test_invalid_supervised_files(tmp_path, line, fragment):
    p = tmp_path / "bad.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(TrainingError) as ei:
        load_examples(str(p), "supervised")
    assert ei.value.code == "invalid_training_file"
    assert ei.value.param == "training_file"
    assert fragment in ei.value.message


def test_invalid_dpo_and_validation_file(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"input": {"messages": [{"role": "user", "content": "q"}]},
                                               "preferred_output": [{"role": "assistant", "content": "a"}]}])
    with pytest.raises(TrainingError) as ei:
        load_examples(p, "dpo", "validation_file")
    assert ei.value.code == "invalid_validation_file" and "non_preferred_output" in ei.value.message
    with pytest.raises(TrainingError) as ei:
        load_examples(str(tmp_path / "missing.jsonl"), "supervised")
    assert ei.value.code == "invalid_training_file"
