"""A job on several processes: ``torchrun`` (``python -m torch.distributed.run``) with one rank per device.

``TorchrunProcess`` has ``TrainingProcess``'s interface (start / poll / wait / pause / cancel, status,
result, error, traceback), so the scheduler cannot tell them apart; ``make_training_process`` picks one.

* Events: rank 0 appends them to a file in a private control directory (see ``worker.py``); ``poll()``
  reads what is new, never blocking (a line without its newline is left for the next poll).
* Pause: ``pause()`` creates the control directory's ``stop`` file; the ranks agree on the step with a
  collective, rank 0 writes the checkpoint, every rank exits 0.
* Cancel: SIGTERM to torchrun, whose elastic agent stops every rank (SIGTERM, then SIGKILL); after
  ``timeout`` torchrun itself is killed, and then any rank still alive (each rank is also killed by
  the kernel when the agent dies: ``PR_SET_PDEATHSIG``).
* A rank that dies or fails: the agent (``--max-restarts 0``) stops the others at once and exits
  non-zero; the job fails with that rank's error, read from its error file, or with its exit signal
  from torchrun's failure report. Never a hang: no rank waits for a dead peer past the agent's
  monitoring interval (0.1 s).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import tunegate

from .process import OFFLINE_ENV, TrainingProcess, child_environment, poll_until_done
from .spec import TrainResult, TrainSpec
from .worker import ERROR, RESULT

#: where ``import tunegate`` comes from, for the ranks' ``-m tunegate.trainer.worker``
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tunegate.__file__)))
_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")
_LOG_TAIL = 16_000


def rank_deaths(log_tail: str, failed_ranks: set[int]) -> list[tuple[int, int]]:
    """(rank, exit code) of each rank torchrun's failure report shows killed by a signal, the cause first.

    When one rank dies, torchrun's agent stops the others with SIGTERM, and its report may name one of those
    as the "first observed failure" (the order depends on when it noticed each exit; CI saw both): a death
    by another signal is the cause and comes first. SIGTERM alone (the whole group was stopped) stays."""
    deaths = [(int(r), int(c)) for r, c in _FAILURE.findall(log_tail) if int(c) < 0 and int(r) not in failed_ranks]
    return sorted(deaths, key=lambda death: death[1] == -signal.SIGTERM)  # stable: report order otherwise


def make_training_process(spec: TrainSpec, on_event: Callable[[dict[str, Any]], None], *, processes: int = 1,
                          env: dict[str, str] | None = None) -> TrainingProcess | TorchrunProcess:
    """One process: a multiprocessing child (``TrainingProcess``); more: a torchrun group."""
    if processes > 1:
        return TorchrunProcess(spec, on_event, processes=processes, env=env)
    return TrainingProcess(spec, on_event, env=env)


def pid_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class TorchrunProcess:
    """One fine-tuning job as a torchrun group of ``processes`` ranks (DDP, or FSDP on GPUs)."""

    def __init__(self, spec: TrainSpec, on_event: Callable[[dict[str, Any]], None], *, processes: int,
                 env: dict[str, str] | None = None, monitor_interval: float = 0.1):
        self.spec = spec
        self.on_event = on_event
        self.processes = processes
        self.env = dict(env or {})
        self.monitor_interval = monitor_interval
        self.status = "created"
        self.result: TrainResult | None = None
        self.error: dict[str, Any] | None = None
        self.traceback: str | None = None
        self.ctrl: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._offset = 0
        self._rank_pids: dict[int, int] = {}
        self._cancelled = False

    # ------------------------------------------------------------------ control
    def _environment(self) -> dict[str, str]:
        env = child_environment(os.environ)
        env.update(OFFLINE_ENV)
        env.update(self.env)
        env["PYTHONPATH"] = _PACKAGE_ROOT
        threads = env.get("TUNEGATE_TRAINER_THREADS")
        # torchrun would set 1 (with a warning); split the cores between the ranks instead
        env.setdefault("OMP_NUM_THREADS", threads or str(max(1, (os.cpu_count() or 1) // self.processes)))
        return env

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("TorchrunProcess already started")
        self.ctrl = tempfile.mkdtemp(prefix=f"tunegate-{self.spec.job_id}-")  # mode 0700
        with open(os.path.join(self.ctrl, "spec.json"), "w") as f:
            json.dump(self.spec.to_dict(), f)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.processes}",
               "--max-restarts=0", f"--monitor-interval={self.monitor_interval}",
               "-m", "tunegate.trainer.worker", self.ctrl]
        self._log = open(os.path.join(self.ctrl, "launcher.log"), "ab")
        # Own session: a Ctrl-C in the gateway's terminal is the gateway's business, not the ranks'.
        self._proc = subprocess.Popen(cmd, env=self._environment(), stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        self.status = "running"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def exitcode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def rank_pids(self) -> dict[int, int]:
        """rank -> pid of the ranks that have started so far."""
        if self.ctrl is not None and os.path.isdir(self.ctrl):
            for path in glob.glob(os.path.join(self.ctrl, "rank-*.pid")):
                rank = int(os.path.basename(path).split("-")[1].split(".")[0])
                try:
                    with open(path) as f:
                        self._rank_pids[rank] = int(f.read().strip())
                except (OSError, ValueError):
                    continue  # being written
        return dict(self._rank_pids)

    def pause(self) -> None:
        """Ask the ranks to checkpoint and exit after the current step (non-blocking)."""
        if self.ctrl is not None and self.status == "running":
            open(os.path.join(self.ctrl, "stop"), "w").close()

    def cancel(self, timeout: float = 10.0) -> None:
        """Stop every rank now; blocks until torchrun and all ranks are gone."""
        if self._proc is None:
            self.status = "cancelled"
            return
        if self.status in ("succeeded", "failed", "paused", "cancelled") and not self.is_alive():
            return
        self._cancelled = True
        pids = self.rank_pids()
        if self.is_alive():
            self._proc.send_signal(signal.SIGTERM)  # the agent stops its workers, then exits
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(5)
        self._kill_ranks(pids)
        self.status = "cancelled"
        self._close()

    def _kill_ranks(self, pids: dict[int, int], wait: float = 5.0) -> None:
        """SIGKILL ranks that outlived their agent (checked to be this group's worker by their command line)."""
        mine = [pid for pid in pids.values() if self._is_our_rank(pid)]
        for pid in mine:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while any(pid_running(p) for p in mine) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _is_our_rank(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            return False
        return self.ctrl is not None and self.ctrl.encode() in cmdline and pid_running(pid)

    # ------------------------------------------------------------------ events
    def _read_events(self) -> None:
        assert self.ctrl is not None
        try:
            with open(os.path.join(self.ctrl, "events.jsonl"), "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line without its newline is still being written
        self._offset += end
        for line in data[:end].splitlines():
            if line.strip():
                self._handle(json.loads(line))

    def _handle(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == RESULT:
            self.result = TrainResult.from_dict(ev["result"])
            self.status = self.result.status
        elif kind == ERROR:  # never written by the worker today; kept symmetrical with TrainingProcess
            self.error = ev["error"]
            self.status = "failed"
        elif not self._cancelled:
            self.on_event(ev)

    def poll(self) -> str:
        """Deliver new events to ``on_event``; return the current status. Never blocks for long."""
        if self.status != "running" or self._proc is None:
            return self.status
        self.rank_pids()
        self._read_events()
        if self.status == "running" and self._proc.poll() is not None:
            self._read_events()
            if self.status == "running":
                self._fail_from_exit()
        if self.status != "running":
            self._finish_group()
            self._close()
        return self.status

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> str:
        return poll_until_done(self.poll, timeout, interval)

    # ------------------------------------------------------------------ endings
    def _finish_group(self) -> None:
        """After rank 0's result, the other ranks exit within moments; one that does not is stopped."""
        assert self._proc is not None
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(5)
            self._kill_ranks(self._rank_pids)

    def _fail_from_exit(self) -> None:
        """The group ended without a result: the job fails with the error of the rank that caused it."""
        assert self._proc is not None and self.ctrl is not None
        log_tail = self._log_tail()
        errors = []
        for path in glob.glob(os.path.join(self.ctrl, "rank-*.error.json")):
            with open(path) as f:
                errors.append(json.load(f))
        errors.sort(key=lambda e: e["time"])
        failed_ranks = {e["rank"] for e in errors}
        deaths = rank_deaths(log_tail, failed_ranks)
        own = [e for e in errors if not e["collective"]]  # a rank's own failure, not "my peer vanished"
        if own:
            chosen = own[0]
            self.error = dict(chosen["error"])
            self.traceback = chosen.get("traceback") or log_tail
        elif deaths:
            rank, code = deaths[0]
            self.error = {"code": "training_error", "param": None,
                          "message": f"training process rank {rank} died unexpectedly (signal {-code})"}
            self.traceback = log_tail
        elif errors:
            self.error = dict(errors[0]["error"])
            self.traceback = errors[0].get("traceback") or log_tail
        else:
            code = self._proc.returncode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self.error = {"code": "training_error", "param": None,
                          "message": f"training processes exited unexpectedly (torchrun {how})"}
            self.traceback = log_tail
        text = self.error["message"]
        if self.error.get("code") == "training_error" and not text.startswith("training process"):
            text = f"Training failed: {text}"
        self.on_event({"type": "message", "level": "error", "message": text})
        self.status = "failed"

    def _log_tail(self) -> str:
        assert self.ctrl is not None
        try:
            with open(os.path.join(self.ctrl, "launcher.log"), "rb") as f:
                f.seek(max(0, os.path.getsize(f.name) - _LOG_TAIL))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.ctrl is not None:
            shutil.rmtree(self.ctrl, ignore_errors=True)
