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
import multiprocessing.util
import os
import queue as queue_mod
import re
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Mapping
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


# What a training child may inherit from the gateway's environment. The gateway holds provider secrets
# (AWS_*, GOOGLE_*, TUNEGATE_SECRET_KEY, database URLs with passwords …); a training child runs model
# code and needs none of them: only where things are (paths, caches, locale) and how to run (CUDA, threads).
CHILD_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "SHELL",
    "LD_LIBRARY_PATH", "VIRTUAL_ENV", "PYTHONHASHSEED", "XDG_CACHE_HOME", "TRANSFORMERS_CACHE",
    "HUGGINGFACE_HUB_CACHE", "TOKENIZERS_PARALLELISM", "SSL_CERT_FILE", "SSL_CERT_DIR",
})
CHILD_ENV_PREFIXES = ("LC_", "HF_", "CUDA_", "NVIDIA_", "NCCL_", "TORCH_", "PYTORCH_", "OMP_", "MKL_",
                      "OPENBLAS_", "KMP_", "TUNEGATE_TRAINER_")
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of ``environ``; a name that looks secret is left out even when its prefix
    is allowed (``HF_TOKEN``: the child never downloads, it runs offline)."""
    return {name: value for name, value in environ.items()
            if (name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES)) and not _SECRET_NAME.search(name)}


_launch_env = threading.local()  # the environment the next spawn from this thread gets (None: inherit)
_spawnv_passfds = multiprocessing.util.spawnv_passfds


def _spawnv_passfds_with_env(path: Any, args: Any, passfds: Any) -> int:
    """multiprocessing's spawn, with an environment. ``spawnv_passfds`` has no ``env`` argument and
    inherits all of ``os.environ``; changing ``os.environ`` around a start would race every other thread
    of the gateway. Only a start made by ``TrainingProcess`` (this thread's ``_launch_env``) is changed."""
    env = getattr(_launch_env, "env", None)
    if env is None:
        return _spawnv_passfds(path, args, passfds)
    child = subprocess.Popen(args, executable=path, pass_fds=tuple(sorted(map(int, passfds))), env=env,
                             close_fds=True, restore_signals=False)
    # multiprocessing waits for this pid itself: subprocess must never reap it (nor, once it is gone, a
    # later process that got the same pid), so the object is marked finished and kept from its cleanup.
    child.returncode = 0
    return child.pid


multiprocessing.util.spawnv_passfds = _spawnv_passfds_with_env  # type: ignore[assignment]


def _child_main(spec_dict: dict[str, Any], events: Any, stop: Any, extra_env: dict[str, str]) -> None:
    """Entry point of the child process. Must stay importable at module level (spawn)."""
    os.environ.update(OFFLINE_ENV)
    os.environ.update(extra_env)
    os.umask(0o077)  # checkpoints and adapters: the gateway user's alone (tunegate.private)
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
        _launch_env.env = child_environment(os.environ)
        try:
            self._proc.start()
        finally:
            _launch_env.env = None
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
        return poll_until_done(self.poll, timeout, interval)

    def _close(self) -> None:
        try:
            self._events.close()
            self._events.cancel_join_thread()
        except (OSError, ValueError):
            pass


def poll_until_done(poll: Callable[[], str], timeout: float | None, interval: float) -> str:
    """Call ``poll`` every ``interval`` seconds while it answers ``running`` (for ``timeout`` seconds at most);
    the last status it gave."""
    deadline = None if timeout is None else time.monotonic() + timeout
    status = poll()
    while status == "running" and (deadline is None or time.monotonic() <= deadline):
        time.sleep(interval)
        status = poll()
    return status
