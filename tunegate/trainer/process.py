"""Run ``run_training`` in a child process (multiprocessing *spawn* context) and stream its events back.

The child never shares the gateway's event loop, threads or CUDA context; cancelling terminates it
(SIGTERM, then SIGKILL) and the OS reclaims all of its memory, GPU memory included.

Usage from the gateway (poll() never blocks, so it can be called from an asyncio task)::

    proc = TrainingProcess(spec, on_event=store_event)
    proc.start()
    while (status := proc.poll()) == "running":
        await asyncio.sleep(0.5)
    if status == "succeeded": use(proc.result)          # TrainResult
    elif status == "paused":  later TrainSpec(..., resume_from=proc.result.resume_checkpoint)
    elif status == "failed":  report(proc.error)         # {"code", "message", "param"}
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from .spec import TrainingError, TrainResult, TrainSpec

_RESULT = "_tunegate_result"
_ERROR = "_tunegate_error"

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _child_main(spec_dict: dict[str, Any], events: Any, stop: Any, extra_env: dict[str, str]) -> None:
    """Entry point of the child process. Must stay importable at module level (spawn)."""
    os.environ.update(OFFLINE_ENV)
    os.environ.update(extra_env)
    # A clean SIGTERM exit: let the default action kill us (no Python cleanup that could hang on CUDA).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the gateway's terminal is the parent's business
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)

    from .engine import run_training

    spec = TrainSpec.from_dict(spec_dict)
    try:
        result = run_training(spec, events.put, stop.is_set)
        events.put({"type": _RESULT, "result": result.to_dict()})
    except TrainingError as e:
        events.put({"type": "message", "level": "error", "message": e.message})
        events.put({"type": _ERROR, "error": e.to_dict()})
    except BaseException as e:  # noqa: BLE001 - report everything, including MemoryError / KeyboardInterrupt
        msg = f"{type(e).__name__}: {e}"
        events.put({"type": "message", "level": "error", "message": f"Training failed: {msg}"})
        events.put(
            {
                "type": _ERROR,
                "error": {"code": "training_error", "message": msg, "param": None},
                "traceback": traceback.format_exc(),
            }
        )
    finally:
        events.close()
        events.join_thread()


class TrainingProcess:
    """One fine-tuning job in a child process.

    ``status`` is one of ``"created" | "running" | "succeeded" | "failed" | "cancelled" | "paused"``.
    ``on_event`` is called from ``poll()`` / ``wait()`` / ``cancel()``, in the caller's thread, with
    each event dict the child emitted (see README for the event shapes).
    """

    def __init__(
        self,
        spec: TrainSpec,
        on_event: Callable[[dict[str, Any]], None],
        *,
        env: dict[str, str] | None = None,
    ):
        self.spec = spec
        self.on_event = on_event
        self.env = dict(env or {})
        self._ctx = mp.get_context("spawn")
        self._events: Any = self._ctx.Queue()
        self._stop = self._ctx.Event()
        self._proc: Any = None
        self.status = "created"
        self.result: TrainResult | None = None
        self.error: dict[str, Any] | None = None
        self.traceback: str | None = None
        self._cancelled = False
        self._exit_seen_at: float | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("TrainingProcess already started")
        self._proc = self._ctx.Process(
            target=_child_main,
            args=(self.spec.to_dict(), self._events, self._stop, self.env),
            name=f"tunegate-train-{self.spec.job_id}",
            daemon=True,
        )
        self._proc.start()
        self.status = "running"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode if self._proc is not None else None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def pause(self) -> None:
        """Ask the child to save a checkpoint and exit after the current step.

        Non-blocking: ``poll()`` returns ``"paused"`` once the child has saved it;
        ``result.resume_checkpoint`` is then the directory to pass as ``TrainSpec.resume_from``.
        """
        self._stop.set()

    def cancel(self, timeout: float = 10.0) -> None:
        """Terminate the child now: SIGTERM, then SIGKILL after ``timeout`` seconds. Blocks until it is gone."""
        if self._proc is None:
            self.status = "cancelled"
            return
        if self.status in ("succeeded", "failed", "paused", "cancelled") and not self._proc.is_alive():
            return
        self._cancelled = True
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        # Events still queued are dropped: a killed writer may have left a partial message in the pipe.
        self.status = "cancelled"
        self._close()

    # ------------------------------------------------------------------ events
    def _handle(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == _RESULT:
            self.result = TrainResult.from_dict(ev["result"])
            self.status = self.result.status  # "succeeded" | "paused"
        elif kind == _ERROR:
            self.error = ev["error"]
            self.traceback = ev.get("traceback")
            self.status = "failed"
        elif not self._cancelled:
            self.on_event(ev)

    def _drain(self, block: bool, timeout: float = 0.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if block:
                    ev = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    ev = self._events.get_nowait()
            except (queue_mod.Empty, EOFError, OSError, ValueError):
                return
            self._handle(ev)
            if self.status != "running" and block:
                block = False

    def poll(self) -> str:
        """Deliver pending events to ``on_event``; return the current status. Never blocks for long."""
        if self.status != "running":
            return self.status
        self._drain(block=False)
        if self.status == "running" and not self._proc.is_alive():
            # The child is gone; its last events may still be in the pipe. Give them a moment.
            self._drain(block=True, timeout=2.0)
            if self.status == "running":
                code = self._proc.exitcode
                how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                self.error = {
                    "code": "training_error",
                    "message": f"training process died unexpectedly ({how})",
                    "param": None,
                }
                self.status = "failed"
        if self.status != "running":
            self._proc.join(5)
            self._close()
        return self.status

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> str:
        """Poll until the job leaves ``running`` (or ``timeout`` seconds pass); return the status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() == "running":
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(interval)
        return self.status

    def _close(self) -> None:
        try:
            self._events.close()
            self._events.cancel_join_thread()
        except (OSError, ValueError):
            pass
