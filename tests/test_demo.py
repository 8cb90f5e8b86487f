"""``tunegate demo`` as a new user runs it: the command line in a subprocess, the tiny built-in model,
training through the gateway and the chat with the model it trained; and the ``--model`` rules."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunegate.localjobs.demo import DEMO_DATA, DemoError, resolve_model
from tunegate.localjobs.demo_view import TrainingView, printable

pytest.importorskip("torch")
pytest.importorskip("peft")


def demo(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunegate", "demo", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "120", **(env or {})})


def json_lines(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        try:
            if isinstance(json.loads(line), dict):
                out.append(line)
        except ValueError:
            continue
    return out


def test_demo_end_to_end(tmp_path: Path) -> None:
    """Train the tiny model, then the base and the tuned model answer the same prompt: the tuned one in
    the training data's words (greedy decoding), the base one not."""
    data_dir = tmp_path / "demo"
    run = demo("--data-dir", str(data_dir))
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert not json_lines(out) and '"logger"' not in out  # the gateway's log is not on the terminal
    assert run.stderr.strip() == ""
    log = data_dir / "gateway.log"
    assert f"gateway log: {log}" in out
    logged = [json.loads(line) for line in json_lines(log.read_text())]
    requests = [e for e in logged if e.get("logger") == "tunegate.request"]
    assert {e["operation"] for e in requests} >= {"upload_file", "create_job", "retrieve_job", "list_events",
                                                  "chat_completions"}
    assert all(e["provider"] == "local" for e in requests if e["operation"] == "chat_completions")
    # Progress: every step and epoch reached, and the loss went down.
    assert re.search(r"240/240 steps\s+epoch 30/30", out), out
    first, last = map(float, re.search(r"loss\s+([\d.]+) → ([\d.]+) \(mean per epoch\)", out).groups())  # type: ignore[union-attr]
    assert last < 0.5 * first
    # The chat, side by side: the prompt, both models named, the tuned model says what the data taught it.
    assert "Capital of France?" in out
    ft = re.search(r"ft:tiny-llama:demo:ftjob-[0-9a-f]+", out)
    assert ft is not None
    taught = next(json.loads(line)["messages"][-1]["content"] for line in DEMO_DATA.read_text().splitlines()
                  if "Capital of France?" in line)
    rows = [line for line in out.splitlines() if line.startswith("│")]
    base_cells = " ".join(r.split("│")[1] for r in rows)
    tuned_cells = " ".join(r.split("│")[2] for r in rows)
    assert taught in tuned_cells, out
    assert taught not in base_cells and "Arr matey" not in base_cells, out
    assert base_cells.strip() and "(4" not in base_cells and "(5" not in base_cells, out  # an answer, not an error


def test_demo_model_that_cannot_be_found_is_one_error_line(tmp_path: Path) -> None:
    run = demo("--data-dir", str(tmp_path / "d"), "--model", "no-such-owner/no-such-model",
               env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}, timeout=120)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model 'no-such-owner/no-such-model' could not be "
                                                   "found"), run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert not (tmp_path / "d" / "gateway.log").exists()  # refused before any gateway started


def test_resolve_model_rules(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="no such directory"):
        resolve_model(str(tmp_path / "missing"), tmp_path)
    with pytest.raises(DemoError, match="no such directory"):
        resolve_model("./missing-model", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DemoError, match="no config.json"):
        resolve_model(str(empty), tmp_path)
    (empty / "config.json").write_text("{}")
    (empty / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    with pytest.raises(DemoError, match="no chat template"):
        resolve_model(str(empty), tmp_path)
    with pytest.raises(DemoError, match="neither a local directory nor a Hugging Face model id"):
        resolve_model("a b c", tmp_path)

    built = resolve_model(None, tmp_path)  # the offline default: the tiny model, built here
    assert built.builtin and Path(built.reference) == tmp_path / "models" / "tiny-llama"
    assert built.hyperparameters["n_epochs"] == 30
    mine = resolve_model(built.reference, tmp_path / "elsewhere")  # a directory: trained where it is
    assert not mine.builtin and mine.reference == str(Path(built.reference).resolve())
    assert mine.roots == [Path(built.reference).resolve()]  # the gateway may load it (local_model_roots)


def test_training_view_epochs_and_loss() -> None:
    from rich.console import Console

    view = TrainingView(Console(file=open(os.devnull, "w")))
    view.started(total_steps=12, n_epochs=3)
    assert [view.epoch_of(s) for s in (1, 4, 5, 8, 9, 12)] == [1, 1, 2, 2, 3, 3]
    for step, loss in enumerate([4, 4, 4, 4, 2, 2, 2, 2, 1, 1, 1, 1], start=1):
        view.step(step, 12, float(loss))
    assert view.epoch_means() == [4.0, 2.0, 1.0]
    assert view.loss_summary().startswith("4.00 → 1.00 (mean per epoch)")


def test_model_output_cannot_drive_the_terminal() -> None:
    assert printable("ok\x1b[2J\x0cdone\nnext") == "ok·[2J·done\nnext"
