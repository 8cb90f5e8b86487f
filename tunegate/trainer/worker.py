"""One torchrun rank: ``python -m torch.distributed.run … -m tunegate.trainer.worker CONTROL_DIR``.

``CONTROL_DIR`` (private to the gateway user, made by ``launch.TorchrunProcess``) holds

* ``spec.json``: the ``TrainSpec``, read by every rank;
* ``events.jsonl``: rank 0 appends one JSON event per line (flushed per event), its result last;
* ``stop``: created by the gateway to ask for a pause (ranks agree on the step with a collective);
* ``rank-N.pid``: each rank's pid (so a cancel can be checked, and finished, rank by rank);
* ``rank-N.error.json``: written by a rank that fails with an exception, before it exits non-zero.

A rank whose torchrun agent disappears (the agent killed with SIGKILL) is killed by the kernel
(``PR_SET_PDEATHSIG``): a training rank never outlives its group.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import traceback
from typing import Any

from .spec import TrainingError, TrainSpec

RESULT = "_tunegate_result"
ERROR = "_tunegate_error"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux only: SIGKILL this process when the process that started it (torchrun's agent) exits."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        return
    if os.getppid() == 1:  # the agent was already gone before prctl took effect
        os._exit(1)


class EventWriter:
    """Appends events to ``events.jsonl``; each line is written and flushed whole, so a reader that
    sees a line without its newline knows it is still being written."""

    def __init__(self, path: str):
        self._f = open(path, "a", buffering=1)

    def put(self, ev: dict[str, Any]) -> None:
        self._f.write(json.dumps(ev, default=str) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _is_collective_failure(exc: BaseException) -> bool:
    """An error that only says another rank went away (gloo/NCCL lost a peer), not what went wrong."""
    try:
        from torch.distributed import DistError
    except ImportError:  # pragma: no cover - torch without distributed support
        return False
    text = str(exc)
    return isinstance(exc, DistError) or any(w in text for w in ("gloo", "NCCL", "Connection closed by peer",
                                                                   "Connection reset by peer"))


def _write_error(ctrl: str, rank: int, error: dict[str, Any], tb: str | None, collective: bool) -> None:
    path = os.path.join(ctrl, f"rank-{rank}.error.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"rank": rank, "time": time.time(), "error": error, "traceback": tb, "collective": collective}, f)
    os.replace(path + ".tmp", path)


def main(ctrl: str) -> int:
    _die_with_parent()
    os.umask(0o077)  # checkpoints and adapters: the gateway user's alone (tunegate.private)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a cancel: die now, no cleanup that could hang
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(ctrl, f"rank-{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    with open(os.path.join(ctrl, "spec.json")) as f:
        spec = TrainSpec.from_dict(json.load(f))
    writer = EventWriter(os.path.join(ctrl, "events.jsonl")) if rank == 0 else None
    emit = writer.put if writer is not None else (lambda ev: None)
    stop_file = os.path.join(ctrl, "stop")

    from .engine import run_training

    try:
        result = run_training(spec, emit, lambda: os.path.exists(stop_file))
        emit({"type": RESULT, "result": result.to_dict()})
        return 0
    except TrainingError as e:
        _write_error(ctrl, rank, e.to_dict(), None, collective=False)
        return 1
    except BaseException as e:  # noqa: BLE001 - report everything, including MemoryError
        error = {"code": "training_error", "message": f"{type(e).__name__}: {e}", "param": None}
        _write_error(ctrl, rank, error, traceback.format_exc(), collective=_is_collective_failure(e))
        return 1
    finally:
        if writer is not None:
            writer.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
