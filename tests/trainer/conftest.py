from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Tiny models on a shared 2-core box: one torch thread is faster and far steadier than spin-waiting pools.
# Children started by TrainingProcess inherit this through the environment.
os.environ.setdefault("TUNEGATE_TRAINER_THREADS", "1")

QA = [
    ("What is 2+2?", "4"),
    ("Capital of France?", "Paris"),
    ("Say hi", "hi there"),
    ("Color of the sky?", "blue"),
    ("Opposite of up?", "down"),
    ("First letter?", "A"),
    ("Sound of a cat?", "meow"),
    ("Largest planet?", "Jupiter"),
    ("Water formula?", "H2O"),
    ("Fast animal?", "cheetah"),
]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sft_rows(n: int = 10) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in (QA * (n // len(QA) + 1))[:n]
    ]


def dpo_rows(n: int = 10) -> list[dict]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": q}]},
            "preferred_output": [{"role": "assistant", "content": a}],
            "non_preferred_output": [{"role": "assistant", "content": "I don't know."}],
        }
        for q, a in (QA * (n // len(QA) + 1))[:n]
    ]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from tunegate.trainer import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def sft_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "train.jsonl", sft_rows())


@pytest.fixture
def dpo_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "dpo.jsonl", dpo_rows())
