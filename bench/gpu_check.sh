#!/usr/bin/env bash
# The trainer's GPU path in one command (< 10 min on one GPU). Not run in tests; never run yet (no GPU was
# lent while it was written): its figures belong in tunegate/trainer/README.md once it has been.
#
#   bench/gpu_check.sh                       # MODEL=Qwen/Qwen2.5-0.5B-Instruct (local HF cache or a directory)
#   MODEL=/models/llama-3.2-1b-instruct STEPS=40 BATCH=8 bench/gpu_check.sh
#
# 1. prints the GPU(s) and torch's view of them;
# 2. trains LoRA through tunegate.trainer's child process (the path the gateway uses), one run per
#    configuration: bf16 autocast; bf16 + gradient checkpointing; fp16 (loss scaling); QLoRA 4-bit when
#    bitsandbytes is installed; 2 DDP ranks (nccl) when there are 2 GPUs. Each prints trained tokens/s
#    and peak memory (torch.cuda.max_memory_allocated, from the job's own metrics events);
# 3. serves the result through vLLM (bench/serve_gpu.py) when vllm is installed and the model is real.
# The trainer never downloads: without MODEL in the cache (the GPU machine may have no network) it
# trains a generated random model of ~0.2B parameters instead and says so (figures: throughput only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct} STEPS=${STEPS:-30} BATCH=${BATCH:-8}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi: not found"
"$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, devices {torch.cuda.device_count()},",
      f"bf16 {torch.cuda.is_available() and torch.cuda.is_bf16_supported()}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: nothing to check")
EOF

# A file, not stdin: the training children (multiprocessing spawn) re-import the main module by path.
TRAIN_PY=$(mktemp --suffix=.py)
trap 'rm -f "$TRAIN_PY"' EXIT
cat > "$TRAIN_PY" <<'EOF'
import importlib.util, json, os, sys, tempfile, time
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "bench")]
import torch
from bench_trainer import write_dataset
from tunegate.trainer import RuntimeOptions, TrainSpec, build_tiny_model, make_training_process
from tunegate.trainer.engine import load_model_and_tokenizer


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="tunegate-gpu-check-")
    model = os.environ["MODEL"]
    try:
        load_model_and_tokenizer(model, "cpu")  # offline: the local HF cache or a directory only
        real = True
    except Exception as exc:  # noqa: BLE001
        print(f"{model} is not available offline ({type(exc).__name__}); using a generated random model")
        model, real = build_tiny_model(os.path.join(tmp, "random-0.2b"), hidden_size=1024, num_layers=12,
                                       num_heads=16), False
    steps, bs = int(os.environ["STEPS"]), int(os.environ["BATCH"])
    train = os.path.join(tmp, "train.jsonl")
    write_dataset(train, steps * bs, "supervised")

    runs = [("bf16", 1, RuntimeOptions(precision="bf16")),
            ("bf16+gradient-checkpointing", 1, RuntimeOptions(precision="bf16", gradient_checkpointing=True)),
            ("fp16", 1, RuntimeOptions(precision="fp16"))]
    if importlib.util.find_spec("bitsandbytes"):
        runs.append(("qlora-4bit", 1, RuntimeOptions(quantization="4bit", gradient_checkpointing=True)))
    else:
        print("bitsandbytes not installed (pip install -e '.[qlora]'): QLoRA skipped")
    if torch.cuda.device_count() >= 2:
        runs.append(("ddp-2-gpus", 2, RuntimeOptions(precision="bf16")))
        runs.append(("fsdp-2-gpus", 2, RuntimeOptions(precision="bf16", strategy="fsdp")))
    else:
        print("one GPU: DDP/FSDP over 2 GPUs skipped")

    rows = []
    for name, processes, options in runs:
        spec = TrainSpec(job_id=f"gpu-{name}", model=model, training_file=train, validation_file=None,
                         method="supervised", hyperparameters={"n_epochs": 1, "batch_size": bs}, seed=0,
                         suffix=None, output_dir=os.path.join(tmp, name))
        seen = []
        t0 = time.perf_counter()
        proc = make_training_process(spec, lambda ev: seen.append((time.perf_counter(), ev)), processes=processes,
                                     env=options.to_env())
        proc.start()
        status = proc.wait(timeout=150, interval=0.02)
        if status != "succeeded":
            proc.cancel()
            print(f"{name:30s} {status}: {proc.error} {(proc.traceback or '')[-2000:]}")
            rows.append({"run": name, "status": status, "error": proc.error})
            continue
        prog = [(t, ev) for t, ev in seen if ev["type"] == "progress"]
        metrics = [ev["data"] for _, ev in seen if ev["type"] == "metrics"]
        (t1, first), (t2, last) = prog[0], prog[-1]  # first step excluded: CUDA/cuBLAS warm-up
        tps = (last["trained_tokens"] - first["trained_tokens"]) / max(1e-9, t2 - t1)
        row = {"run": name, "processes": processes, "status": status, "steps": last["step"],
               "tokens_per_s": round(tps, 1), "peak_memory_mib": max(m["peak_memory_mib"] for m in metrics),
               "final_loss": round(metrics[-1]["train_loss"], 4), "wall_s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"{name:30s} {row['tokens_per_s']:>10.1f} tok/s  peak {row['peak_memory_mib']:>9.1f} MiB  "
              f"loss {row['final_loss']}  ({row['steps']} steps x {bs}, {row['wall_s']} s)", flush=True)
    out = {"model": model, "real_model": real, "gpu": torch.cuda.get_device_name(0), "runs": rows}
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/gpu_check.json", "w") as f:
        json.dump(out, f, indent=1)
    print("wrote bench/results/gpu_check.json")
    with open(os.path.join(tempfile.gettempdir(), "tunegate-gpu-check-model"), "w") as f:
        f.write(model if real else "")


if __name__ == "__main__":  # the training children (spawn) import this module again
    main()
EOF
timeout 480 "$PY" "$TRAIN_PY"

served=$(cat "${TMPDIR:-/tmp}/tunegate-gpu-check-model" 2>/dev/null || true)
if [ -n "$served" ] && "$PY" -c 'import vllm' 2>/dev/null && [ -f tunegate/serving/local/manager.py ]; then
    timeout 240 "$PY" bench/serve_gpu.py --model "$served" --streams 4 --tokens 64 || echo "vLLM serving check failed"
else
    echo "vLLM serving skipped (needs vllm installed, tunegate/serving/local and a real model)"
fi
