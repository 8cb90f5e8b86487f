"""The training loop: LoRA supervised fine-tuning and DPO, run in the current process.

Everything heavy (torch, transformers, peft) is imported lazily inside the functions here, so that
``import tunegate.trainer`` stays cheap for the gateway process.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

from .data import IGNORE_INDEX, Encoded, encode_dpo, encode_supervised, load_examples
from .dist import Dist
from .runtime import RuntimeOptions
from .spec import (
    METHODS,
    TrainingError,
    TrainResult,
    TrainSpec,
    fine_tuned_model_name,
    resolve_hyperparameters,
)

Emit = Callable[[dict[str, Any]], None]

METRICS_HEADER = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.pt"
MAX_DEFAULT_SEQ_LEN = 2048
GRAD_CLIP_NORM = 1.0
#: number of per-step validation-batch evaluations spread over a run (plus one at the last step)
N_VALID_EVALS = 20


def pick_device(options: RuntimeOptions | None = None, dist: Dist | None = None) -> str:
    """The configured device (``$TUNEGATE_TRAINER_DEVICE``) if set, else ``cuda`` when available, else
    ``cpu``. Under torchrun a bare ``cuda`` is this rank's own GPU, ``cuda:LOCAL_RANK``."""
    import torch

    opts = options or RuntimeOptions.from_env()
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and dist is not None and dist.enabled:
        device = f"cuda:{dist.local_rank}"
    return device


def _n_targets(enc: Encoded) -> int:
    """Tokens the loss is taken over (labels after the shift by one), known before any forward pass."""
    return sum(1 for label in enc.labels[1:] if label != IGNORE_INDEX)


def _peak_memory_mib(device: str) -> float:
    """CUDA: the most memory torch allocated on this device; CPU: this process's peak RSS."""
    import torch

    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated(torch.device(device)) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _ignore(ev: dict[str, Any]) -> None:
    """The emit of ranks other than 0: rank 0 alone reports."""


def _msg(emit: Emit, message: str, level: str = "info", **data: Any) -> None:
    ev: dict[str, Any] = {"type": "message", "level": level, "message": message}
    if data:
        ev["data"] = data
    emit(ev)


def compute_dtype(device: str, precision: str):
    """The dtype base weights load in and forward passes run under (autocast); fp32 on CPU always."""
    import torch

    if not device.startswith("cuda") or precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if bf16 else torch.float32  # "auto"


def _quantization_config(options: RuntimeOptions, device: str, dtype: Any) -> dict[str, Any]:
    """QLoRA: from_pretrained arguments that load the base weights in 4 (NF4) or 8 bits (bitsandbytes)."""
    import torch

    if options.quantization == "none":
        return {}
    if not device.startswith("cuda"):
        raise TrainingError("training_error", "quantized (QLoRA) training needs a CUDA device", None)
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise TrainingError("training_error", "quantized training needs bitsandbytes: pip install "
                            "'tunegate[qlora]'", None) from e
    compute = dtype if dtype != torch.float32 else torch.float16
    if options.quantization == "4bit":
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                 bnb_4bit_use_double_quant=True)
    else:
        cfg = BitsAndBytesConfig(load_in_8bit=True)
    # a quantized model is placed at load time and cannot be moved with .to() afterwards
    return {"quantization_config": cfg, "device_map": {"": torch.device(device).index or 0}}


def hub_snapshot(model_id: str) -> str:
    """A Hub id's snapshot directory in the local cache (never downloaded). transformers looks a name up
    as a directory of the working directory first, so ``models/secret`` would load ``./models/secret``,
    a folder no model root allows, instead of the cached repository the gateway checked: a name that is
    also a relative path is read from the cache's own (absolute) directory. Other names go as given."""
    if not os.path.exists(model_id):
        return model_id
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(model_id, local_files_only=True))
    except Exception as e:  # not in the cache (or a name the hub refuses): the same error as a missing id
        raise TrainingError("model_not_found", f"could not load model {model_id!r} as a model id (looked up in "
                            "the local Hugging Face cache only; offline)", "model") from e


def load_model_and_tokenizer(model_ref: str, device: str, options: RuntimeOptions | None = None):
    """Load tokenizer + causal LM from a local directory or the local HF cache (never the network)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # Only an absolute path is a directory; anything else is a Hub id ("gpt2" is no folder of the cwd).
    local = os.path.isabs(os.path.expanduser(model_ref)) and os.path.isdir(os.path.expanduser(model_ref))
    ref = os.path.expanduser(model_ref) if local else hub_snapshot(model_ref)
    opts = options or RuntimeOptions()
    dtype = compute_dtype(device, opts.precision)
    quant = _quantization_config(opts, device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(ref, local_files_only=True, dtype=dtype, **quant)
    except (OSError, ValueError, KeyError) as e:
        where = "directory" if local else "model id (looked up in the local Hugging Face cache only; offline)"
        raise TrainingError("model_not_found", f"could not load model {model_ref!r} as a {where}: {e}", "model") from e
    if tokenizer.chat_template is None:
        raise TrainingError("model_not_found", f"model {model_ref!r} has no chat template in its tokenizer", "model")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not quant:
        model = model.to(device)  # type: ignore[arg-type]
    return model, tokenizer


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _pad(seqs: list[Encoded], pad_id: int, device: str):
    import torch

    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        labels[i, :n] = torch.tensor(s.labels)
        mask[i, :n] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def _token_logps(model, ids, mask, labels):
    """Per-sequence summed log-prob of labelled tokens; per-token log-probs, label mask and argmax hits."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    tgt = labels[:, 1:]
    valid = tgt != IGNORE_INDEX
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    seq_logp = (logp * valid).sum(-1)
    hit = (logits.argmax(-1) == tgt) & valid
    return seq_logp, logp, valid, hit


class _Trainer:
    """Holds the state of one run. ``step`` counts optimizer steps already done."""

    def __init__(self, spec: TrainSpec, emit: Emit, should_stop: Callable[[], bool] | None,
                 options: RuntimeOptions | None = None, dist: Dist | None = None):
        self.spec = spec
        self.options = options or RuntimeOptions.from_env()
        self.dist = dist or Dist()
        self.emit = emit if self.dist.main else _ignore
        self.should_stop = should_stop or (lambda: False)
        self.out = os.path.abspath(spec.output_dir)
        self.metrics_csv = os.path.join(self.out, "metrics.csv")
        self.checkpoints: list[dict[str, Any]] = []
        self.step = 0
        self.trained_tokens = 0
        self.valid_cursor = 0

    # ---------------------------------------------------------------- setup
    def prepare(self) -> None:
        spec = self.spec
        if spec.method not in METHODS:
            raise TrainingError("invalid_method", f"method must be one of {METHODS}, got {spec.method!r}", "method")
        _msg(self.emit, f"Validating training file: {os.path.basename(spec.training_file)}")
        self.train_examples = load_examples(spec.training_file, spec.method, "training_file")
        self.valid_examples = (
            load_examples(spec.validation_file, spec.method, "validation_file") if spec.validation_file else []
        )
        self.resume_state: dict[str, Any] | None = None
        if spec.resume_from:
            self.resume_state = self._read_resume_state(spec.resume_from)
            self.hp = dict(self.resume_state["hyperparameters"])
        else:
            self.hp = resolve_hyperparameters(spec.hyperparameters, len(self.train_examples), spec.method)
        _msg(self.emit, "Files validated, moving job to queued state")

        import torch

        self.device = pick_device(self.options, self.dist)
        if self.dist.enabled and self.options.strategy == "fsdp" and not self.device.startswith("cuda"):
            # torch's FSDP refuses CPU-only hosts ("FSDP needs a non-CPU accelerator device")
            raise TrainingError("training_error", "strategy 'fsdp' needs CUDA devices; use 'ddp' on CPU", None)
        if self.device.startswith("cuda"):
            torch.cuda.set_device(torch.device(self.device))
        self.dist.setup(self.device)
        self.dtype = compute_dtype(self.device, self.options.precision)
        self.model, self.tokenizer = load_model_and_tokenizer(spec.model, self.device, self.options)
        max_pos = getattr(self.model.config, "max_position_embeddings", None) or MAX_DEFAULT_SEQ_LEN
        self.max_len = int(self.hp.get("max_seq_length") or min(max_pos, MAX_DEFAULT_SEQ_LEN))
        self.train_data = self._encode(self.train_examples, "training_file")
        self.valid_data = self._encode(self.valid_examples, "validation_file") if self.valid_examples else []

        n = len(self.train_data)
        self.bs = int(self.hp["batch_size"])
        self.n_epochs = int(self.hp["n_epochs"])
        self.steps_per_epoch = math.ceil(n / self.bs)
        self.total_steps = self.steps_per_epoch * self.n_epochs

        _seed_everything(spec.seed)  # the same on every rank: identical LoRA initialisation
        self._wrap_lora()
        self._wrap_parallel()
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.hp["learning_rate"], weight_decay=0.0)
        # fp16 needs loss scaling (bf16 has fp32's range and does not)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        if self.dist.rank > 0:  # own dropout masks per rank; rank 0 keeps the single-process stream
            torch.manual_seed(spec.seed * 1_000_003 + 7919 * self.dist.rank)
        if self.resume_state is not None and spec.resume_from:
            self._restore_training_state(spec.resume_from)
        if spec.method == "dpo":
            self._precompute_reference()

    def _read_resume_state(self, ckpt: str) -> dict[str, Any]:
        path = os.path.join(ckpt, STATE_FILE)
        if not os.path.isfile(path) or not os.path.isfile(os.path.join(ckpt, "adapter_config.json")):
            raise TrainingError("invalid_checkpoint", f"{ckpt!r} is not a tunegate training checkpoint", "resume_from")
        with open(path) as f:
            state = json.load(f)
        if state.get("method") != self.spec.method or state.get("n_train_examples") != len(self.train_examples):
            raise TrainingError(
                "invalid_checkpoint",
                "checkpoint was made for a different method or training file",
                "resume_from",
            )
        return state

    def _encode(self, examples: list[dict[str, Any]], param: str) -> list[Any]:
        out: list[Any] = []
        truncated = dropped = 0
        for ex in examples:
            if self.spec.method == "supervised":
                enc = encode_supervised(self.tokenizer, ex, self.max_len)
                truncated += enc.truncated
                if enc.n_label_tokens == 0:
                    dropped += 1
                    continue
                out.append(enc)
            else:
                c, r = encode_dpo(self.tokenizer, ex, self.max_len)
                truncated += c.truncated or r.truncated
                if c.n_label_tokens == 0 or r.n_label_tokens == 0:
                    dropped += 1
                    continue
                out.append((c, r))
        if truncated:
            _msg(
                self.emit,
                f"{truncated} example(s) in {param} exceed {self.max_len} tokens and were truncated",
                "warn",
            )
        if dropped:
            _msg(self.emit, f"{dropped} example(s) in {param} have no trainable tokens after truncation; skipped", "warn")
        if not out:
            code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
            raise TrainingError(code, f"no usable examples in {param} (all truncated away)", param)
        return out

    def _memory_savers(self) -> None:
        """Gradient checkpointing (recompute activations in backward) and QLoRA's preparation."""
        gc = self.options.gradient_checkpointing
        kwargs = {"use_reentrant": False}  # the reentrant variant breaks with DDP and frozen inputs
        if self.options.quantization != "none":
            from peft import prepare_model_for_kbit_training

            self.model = prepare_model_for_kbit_training(self.model, use_gradient_checkpointing=gc,
                                                         gradient_checkpointing_kwargs=kwargs)
        elif gc:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if gc:
            self.model.config.use_cache = False

    def _wrap_parallel(self) -> None:
        """``self.net``: what training forward passes go through (DDP/FSDP wrapper, or the model itself)."""
        self.net = self.model
        self.fsdp = False
        if not self.dist.enabled:
            return
        import torch

        cuda = self.device.startswith("cuda")
        if self.options.strategy == "fsdp":
            # Unverified: no GPU in this repo's tests. LoRA layers become their own FSDP units (peft's
            # policy), so frozen low-precision base weights and fp32 adapters never share a flat parameter.
            from peft.utils.other import fsdp_auto_wrap_policy
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            self.net = FSDP(self.model, auto_wrap_policy=fsdp_auto_wrap_policy(self.model), use_orig_params=True,
                            device_id=torch.device(self.device) if cuda else None)
            self.fsdp = True
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.net = DDP(self.model, device_ids=[torch.device(self.device).index] if cuda else None)

    def _wrap_lora(self) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model

        self._memory_savers()
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            if self.resume_state is not None and self.spec.resume_from:
                self.model = PeftModel.from_pretrained(self.model, self.spec.resume_from, is_trainable=True)
            else:
                cfg = LoraConfig(
                    r=int(self.hp["lora_r"]),
                    lora_alpha=int(self.hp["lora_alpha"]),
                    lora_dropout=float(self.hp["lora_dropout"]),
                    target_modules=self.hp["lora_target_modules"],
                    task_type="CAUSAL_LM",
                )
                self.model = get_peft_model(self.model, cfg)
        if self.options.quantization == "none":
            self.model.to(self.device)

    def _restore_training_state(self, ckpt: str) -> None:
        import torch

        st = self.resume_state
        assert st is not None
        blob = torch.load(os.path.join(ckpt, OPTIM_FILE), map_location=self.device, weights_only=False)
        if self.fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            self.optimizer.load_state_dict(FSDP.optim_state_dict_to_load(self.net, self.optimizer, blob["optimizer"]))
        else:  # DDP: every rank's optimizer state is the same, rank 0's was saved
            self.optimizer.load_state_dict(blob["optimizer"])
        if self.scaler is not None and blob.get("scaler"):
            self.scaler.load_state_dict(blob["scaler"])
        # Each rank its own RNG stream back when the checkpoint has one per rank of this group size;
        # otherwise rank 0 takes the saved one and the others keep their fresh per-rank seeds.
        ranks = blob.get("rng_ranks") or []
        rng = ranks[self.dist.rank] if len(ranks) == self.dist.world else (blob["rng"] if self.dist.main else None)
        if rng is not None:
            torch.set_rng_state(rng)
        if blob.get("cuda_rng") is not None and torch.cuda.is_available() and not self.dist.enabled:
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        self.step = int(st["step"])
        self.trained_tokens = int(st["trained_tokens"])
        self.valid_cursor = int(st.get("valid_cursor", 0))
        self.checkpoints = list(st.get("checkpoints", []))
        os.makedirs(self.out, exist_ok=True)
        src = os.path.join(ckpt, "metrics.csv")
        if self.dist.main and os.path.abspath(src) != self.metrics_csv and os.path.isfile(src):
            shutil.copyfile(src, self.metrics_csv)
        _msg(self.emit, f"Resuming from checkpoint at step {self.step}", step=self.step)

    def _precompute_reference(self) -> None:
        """Reference log-probs = the base model (adapter disabled), computed once: the reference is frozen."""
        import torch

        # Every rank computes all of them (no collective, the same numbers everywhere): it costs a
        # second reference pass per extra rank, once per run, and keeps FSDP's ranks in lockstep.
        self.net.eval()
        for data in (self.train_data, self.valid_data):
            refs: list[tuple[float, float]] = []
            for i in range(0, len(data), self.bs):
                chunk = data[i : i + self.bs]
                seqs = [c for c, _ in chunk] + [r for _, r in chunk]
                ids, mask, labels = _pad(seqs, self.tokenizer.pad_token_id, self.device)
                with torch.no_grad(), self.model.disable_adapter(), self._autocast():
                    lp = _token_logps(self._forward_model(), ids, mask, labels)[0].cpu()
                k = len(chunk)
                refs.extend(zip(lp[:k].tolist(), lp[k:].tolist(), strict=True))
            if data is self.train_data:
                self.ref_train = refs
            else:
                self.ref_valid = refs
        self.net.train()

    def _autocast(self):
        import contextlib

        import torch

        if self.device.startswith("cuda") and self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def _forward_model(self):
        """Training passes go through the DDP/FSDP wrapper; no-grad passes skip DDP's (they need no gradient
        sync), while FSDP's ranks must all run every pass (they gather each other's shards)."""
        import torch

        return self.net if torch.is_grad_enabled() or self.fsdp else self.model

    # ---------------------------------------------------------------- losses
    def _batch_loss(self, items: list[Any], refs: list[tuple[float, float]] | None):
        """One global batch: (loss to backpropagate here, stats of the whole batch, its tokens).

        Each rank runs its share ``items[rank::world]``. The loss is divided by the whole batch's target
        count (known on every rank, no collective needed) and multiplied by the world size, because DDP
        averages gradients over ranks: the gradient applied is then the one-process gradient of the same
        batch. A rank with no share runs one item at weight 0 (every DDP rank must join every backward).
        """
        mine = self.dist.shard(len(items))
        weight = 1.0
        if not mine:
            mine, weight = [0], 0.0
        local = [items[i] for i in mine]
        scale = weight * self.dist.world
        if self.spec.method == "supervised":
            total = max(1, sum(_n_targets(s) for s in items))
            ids, mask, labels = _pad(local, self.tokenizer.pad_token_id, self.device)
            with self._autocast():
                _, logp, valid, hit = _token_logps(self._forward_model(), ids, mask, labels)
            nll = -(logp * valid).sum()
            loss = nll / total * scale
            sums = self.dist.sum([nll.item() / total * weight, hit.sum().item() / total * weight,
                                  float(mask.sum()) * weight])
            return loss, {"loss": sums[0], "acc": sums[1]}, int(sums[2])
        return self._dpo_loss(items, refs, mine, weight, scale)

    def _dpo_loss(self, items: list[Any], refs: list[tuple[float, float]] | None, mine: list[int], weight: float,
                  scale: float):
        import torch
        import torch.nn.functional as F

        assert refs is not None
        local = [items[i] for i in mine]
        k, n = len(local), len(items)
        seqs = [c for c, _ in local] + [r for _, r in local]
        ids, mask, labels = _pad(seqs, self.tokenizer.pad_token_id, self.device)
        with self._autocast():
            seq_logp, _, valid, hit = _token_logps(self._forward_model(), ids, mask, labels)
        ref = torch.tensor([refs[i] for i in mine], dtype=seq_logp.dtype, device=seq_logp.device)
        beta = float(self.hp["beta"])
        margin = beta * (seq_logp[:k] - ref[:, 0]) - beta * (seq_logp[k:] - ref[:, 1])
        terms = -F.logsigmoid(margin)
        loss = terms.sum() / n * scale
        # token accuracy on the preferred completions, for parity with supervised metrics
        chosen_targets = max(1, sum(_n_targets(c) for c, _ in items))
        sums = self.dist.sum([terms.sum().item() / n * weight, hit[:k].sum().item() / chosen_targets * weight,
                              (margin > 0).float().sum().item() / n * weight, margin.sum().item() / n * weight,
                              float(mask.sum()) * weight])
        stats = {"loss": sums[0], "acc": sums[1], "reward_accuracy": sums[2], "reward_margin": sums[3]}
        return loss, stats, int(sums[4])

    def _evaluate(self, items: list[Any], refs: list[tuple[float, float]] | None) -> dict[str, float]:
        import torch

        self.net.eval()
        tot_loss = tot_acc = 0.0
        n = 0
        with torch.no_grad():
            for i in range(0, len(items), self.bs):
                chunk = items[i : i + self.bs]
                _, stats, _ = self._batch_loss(chunk, refs[i : i + self.bs] if refs is not None else None)
                tot_loss += stats["loss"] * len(chunk)
                tot_acc += stats["acc"] * len(chunk)
                n += len(chunk)
        self.net.train()
        return {"loss": tot_loss / max(n, 1), "acc": tot_acc / max(n, 1)}

    def _valid_batch(self) -> dict[str, float] | None:
        if not self.valid_data:
            return None
        n = len(self.valid_data)
        idx = [(self.valid_cursor + j) % n for j in range(min(self.bs, n))]
        self.valid_cursor = (self.valid_cursor + len(idx)) % n
        refs = [self.ref_valid[i] for i in idx] if self.spec.method == "dpo" else None
        return self._evaluate([self.valid_data[i] for i in idx], refs)

    # ---------------------------------------------------------------- persistence
    def _append_csv(self, row: list[Any]) -> None:
        if not self.dist.main:
            return
        new = not os.path.isfile(self.metrics_csv)
        with open(self.metrics_csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(METRICS_HEADER)
            w.writerow(["" if v is None else v for v in row])

    def _truncate_csv(self) -> None:
        """Drop rows past ``self.step`` (left over from a run that went on after the checkpoint)."""
        if not self.dist.main or not os.path.isfile(self.metrics_csv):
            return
        with open(self.metrics_csv, newline="") as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= self.step]
        with open(self.metrics_csv, "w", newline="") as f:
            csv.writer(f).writerows(keep)

    def _save_adapter(self, path: str) -> None:
        """Rank 0 writes the adapter (under FSDP every rank first joins gathering the full weights)."""
        if not self.fsdp:
            if self.dist.main:
                self.model.save_pretrained(path)
            return
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(self.net, StateDictType.FULL_STATE_DICT, cfg):
            full = self.net.state_dict()
        if self.dist.main:
            self.model.save_pretrained(path, state_dict=full)

    def _save_checkpoint(self, name: str) -> str:
        """Every rank calls this (collectives inside); rank 0 alone writes the files."""
        import torch

        path = os.path.join(self.out, "checkpoints", name)
        rngs = self.dist.gather(torch.get_rng_state())
        if self.fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            optim = FSDP.optim_state_dict(self.net, self.optimizer)
        else:
            optim = self.optimizer.state_dict()
        self._save_adapter(path)
        if not self.dist.main:
            return path
        os.makedirs(path, exist_ok=True)
        blob = {
            "optimizer": optim,
            "rng": rngs[0],
            "rng_ranks": rngs if self.dist.enabled else None,
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        torch.save(blob, os.path.join(path, OPTIM_FILE))
        if os.path.isfile(self.metrics_csv):
            shutil.copyfile(self.metrics_csv, os.path.join(path, "metrics.csv"))
        state = {
            "job_id": self.spec.job_id,
            "model": self.spec.model,
            "method": self.spec.method,
            "seed": self.spec.seed,
            "step": self.step,
            "total_steps": self.total_steps,
            "trained_tokens": self.trained_tokens,
            "valid_cursor": self.valid_cursor,
            "n_train_examples": len(self.train_examples),
            "hyperparameters": self.hp,
            "checkpoints": self.checkpoints,
        }
        with open(os.path.join(path, STATE_FILE), "w") as f:
            json.dump(state, f, indent=1)
        return path

    # ---------------------------------------------------------------- main loop
    def _lr_at(self, step: int) -> float:
        """Linear decay from the resolved learning rate to 0 over the run, no warmup."""
        return float(self.hp["learning_rate"]) * (1.0 - step / self.total_steps)

    def _result(self, status: str, adapter_dir: str, resume: str | None) -> TrainResult:
        return TrainResult(
            fine_tuned_model=fine_tuned_model_name(self.spec.model, self.spec.suffix, self.spec.job_id),
            adapter_dir=adapter_dir,
            metrics_csv=self.metrics_csv,
            trained_tokens=self.trained_tokens,
            checkpoints=list(self.checkpoints),
            hyperparameters=dict(self.hp),
            status=status,
            step=self.step,
            total_steps=self.total_steps,
            resume_checkpoint=resume,
        )

    def _pause(self) -> TrainResult:
        path = self._save_checkpoint(f"pause-step-{self.step}")
        _msg(self.emit, f"Job paused at step {self.step}/{self.total_steps}", step=self.step, path=path)
        self.emit({"type": "paused", "step": self.step, "total_steps": self.total_steps, "path": path})
        return self._result("paused", path, path)

    def _optimizer_step(self, loss: Any) -> None:
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        else:
            loss.backward()  # under DDP: gradients are averaged over ranks here
        if self.fsdp:
            self.net.clip_grad_norm_(GRAD_CLIP_NORM)  # the norm over every rank's shard
        else:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], GRAD_CLIP_NORM)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def train(self) -> TrainResult:
        os.makedirs(self.out, exist_ok=True)
        if self.resume_state is None:
            if self.dist.main and os.path.isfile(self.metrics_csv):
                os.remove(self.metrics_csv)
        else:
            self._truncate_csv()
        self.emit(
            {
                "type": "message",
                "level": "info",
                "message": "Fine-tuning job started",
                "data": {
                    "device": self.device,
                    "total_steps": self.total_steps,
                    "n_train_examples": len(self.train_data),
                    "n_valid_examples": len(self.valid_data),
                    "hyperparameters": self.hp,
                    "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                    "processes": self.dist.world,
                    "strategy": (self.options.strategy if self.dist.enabled else None),
                    "dtype": str(self.dtype).removeprefix("torch."),
                    "quantization": self.options.quantization,
                    "gradient_checkpointing": self.options.gradient_checkpointing,
                    "peak_memory": "cuda_max_memory_allocated" if self.device.startswith("cuda") else "cpu_max_rss",
                },
            }
        )
        eval_every = max(1, round(self.total_steps / N_VALID_EVALS))
        self.net.train()
        t_start = time.time()
        start_step = self.step
        last: dict[str, Any] = {}
        while self.step < self.total_steps:
            if self.dist.any(self.should_stop()):  # every rank pauses at the same step
                return self._pause()
            epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
            order = _epoch_order(len(self.train_data), self.spec.seed, epoch)
            idx = order[in_epoch * self.bs : (in_epoch + 1) * self.bs]
            batch = [self.train_data[i] for i in idx]
            refs = [self.ref_train[i] for i in idx] if self.spec.method == "dpo" else None

            for g in self.optimizer.param_groups:
                g["lr"] = self._lr_at(self.step)
            loss, stats, n_tok = self._batch_loss(batch, refs)
            if not math.isfinite(stats["loss"]):
                raise TrainingError("training_error", f"loss became {stats['loss']} at step {self.step + 1}", None)
            self._optimizer_step(loss)
            self.step += 1
            self.trained_tokens += n_tok

            valid = None
            if self.valid_data and (self.step % eval_every == 0 or self.step == self.total_steps):
                valid = self._valid_batch()
            data: dict[str, Any] = {
                "step": self.step,
                "total_steps": self.total_steps,
                "train_loss": stats["loss"],
                "train_mean_token_accuracy": stats["acc"],
                "valid_loss": valid["loss"] if valid else None,
                "valid_mean_token_accuracy": valid["acc"] if valid else None,
                "peak_memory_mib": _peak_memory_mib(self.device),
            }
            if self.spec.method == "dpo":
                data["train_reward_accuracy"] = stats["reward_accuracy"]
                data["train_reward_margin"] = stats["reward_margin"]
            text = f"Step {self.step}/{self.total_steps}: training loss={stats['loss']:.4f}"
            if valid:
                text += f", validation loss={valid['loss']:.4f}"
            self.emit({"type": "metrics", "level": "info", "message": text, "data": data})
            self._append_csv(
                [self.step, stats["loss"], stats["acc"], data["valid_loss"], data["valid_mean_token_accuracy"]]
            )
            last = data
            elapsed = time.time() - t_start
            done_here = self.step - start_step
            eta = time.time() + elapsed / done_here * (self.total_steps - self.step)
            self.emit(
                {
                    "type": "progress",
                    "step": self.step,
                    "total_steps": self.total_steps,
                    "trained_tokens": self.trained_tokens,
                    "estimated_finish": int(math.ceil(eta)),
                }
            )

            if self.step % self.steps_per_epoch == 0:
                full = None
                if self.valid_data:
                    full = self._evaluate(self.valid_data, self.ref_valid if self.spec.method == "dpo" else None)
                metrics = {
                    "step": self.step,
                    "train_loss": last["train_loss"],
                    "train_mean_token_accuracy": last["train_mean_token_accuracy"],
                    "valid_loss": last["valid_loss"],
                    "valid_mean_token_accuracy": last["valid_mean_token_accuracy"],
                    "full_valid_loss": full["loss"] if full else None,
                    "full_valid_mean_token_accuracy": full["acc"] if full else None,
                }
                name = f"step-{self.step}"
                entry = {"step": self.step, "path": os.path.join(self.out, "checkpoints", name), "metrics": metrics}
                self.checkpoints.append(entry)
                self._save_checkpoint(name)
                _msg(self.emit, f"Checkpoint created at step {self.step}", step=self.step)
                self.emit({"type": "checkpoint", **entry})

        adapter_dir = os.path.join(self.out, "adapter")
        self._save_adapter(adapter_dir)
        result = self._result("succeeded", adapter_dir, None)
        if self.dist.main:
            with open(os.path.join(self.out, "result.json"), "w") as f:
                json.dump(result.to_dict(), f, indent=1)
        _msg(self.emit, "New fine-tuned model created", fine_tuned_model=result.fine_tuned_model)
        _msg(self.emit, "The job has successfully completed")
        return result


def run_training(
    spec: TrainSpec, emit: Emit, should_stop: Callable[[], bool] | None = None
) -> TrainResult:
    """Run one fine-tuning job to completion (or until ``should_stop()`` is true → pause) in this process.

    ``$TUNEGATE_TRAINER_THREADS`` (if set) caps torch's CPU threads for this process.
    Raises ``TrainingError`` for invalid input (bad file, unknown model, bad hyperparameters, bad
    checkpoint); any other exception is a bug or a runtime failure (e.g. out of memory).
    """
    options = RuntimeOptions.from_env()
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    dist = Dist()
    trainer = _Trainer(spec, emit, should_stop, options, dist)
    trainer.prepare()
    result = trainer.train()
    dist.close()
    return result
