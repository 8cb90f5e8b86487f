"""This process's place in a torchrun group, or a group of one (then every method is a no-op).

torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (and the rendezvous address) for each rank.
The engine uses a few collectives only: sums of per-step statistics, "does any rank want to stop",
and gathering each rank's RNG state into a checkpoint. Backend: ``nccl`` on CUDA, ``gloo`` on CPU.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

#: a rank stuck waiting for others this long fails instead of hanging forever (a dead rank is normally
#: noticed far sooner: torchrun's agent sees the exit and stops the whole group)
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


class Dist:
    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        self.world = int(env.get("WORLD_SIZE", "1"))
        self.rank = int(env.get("RANK", "0"))
        self.local_rank = int(env.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self._device = "cpu"

    @property
    def main(self) -> bool:
        """Rank 0: the one that emits events and writes files."""
        return self.rank == 0

    def setup(self, device: str) -> None:
        """Join the process group; ``device`` is where collectives' tensors live (nccl needs CUDA ones)."""
        if not self.enabled:
            return
        import torch.distributed as td

        backend = "nccl" if device.startswith("cuda") else "gloo"
        self._device = device if backend == "nccl" else "cpu"
        if not td.is_initialized():
            td.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all ranks."""
        if not self.enabled:
            return list(values)
        import torch
        import torch.distributed as td

        t = torch.tensor(values, dtype=torch.float64, device=self._device)
        td.all_reduce(t, op=td.ReduceOp.SUM)
        return [float(x) for x in t.cpu().tolist()]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on at least one (so all ranks pause at the same step)."""
        if not self.enabled:
            return flag
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()

    def shard(self, n: int) -> list[int]:
        """Indices of a global batch of ``n`` items this rank runs: ``rank, rank + world, …``."""
        return list(range(self.rank, n, self.world))
