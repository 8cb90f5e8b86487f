"""Upload validation on another core: a helper process per upload, fed the file's bytes through a pipe
while the gateway streams the same bytes upstream.

The serving process spends ~0.25 s of CPU passing 200 MiB through and the validator ~0.7 s checking
them; inline, both run one after the other on the serving process's core. With the validator in a
child process the two overlap (on a machine with a second core) and the serving process's event loop
is no longer held by the validator's per-chunk work.

Protocol: the parent writes the file's bytes to the child's stdin and closes it; the child runs the
same :class:`~tunegate.data.validator.Validator` over them and writes its report as one JSON object on
stdout (``Report.to_dict``), then exits 0. Anything else (an exit without a report, a report that does
not parse, a child that stops reading or answering) is the gateway's failure: :class:`ValidatorFailed`
(500), never a hang and never a file passed unchecked.

The child is ``python -m tunegate.data.worker METHOD MAX_BYTES`` (kept apart from this module so it
imports the validator only, not the gateway's error classes and their web framework).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import orjson

from tunegate.errors import APIError

from .validator import Report

PIPE_SIZE = 1024 * 1024  # F_SETPIPE_SZ: the default 64 KiB pipe would stall the parent every 64 KiB
F_SETPIPE_SZ = 1031  # linux/fcntl.h
STALL_SECONDS = 60.0  # a child that takes no byte for this long is stuck: the upload fails
WATCH_EVERY = 5.0  # how often the stall is checked
BATCH = 256 * 1024  # bytes gathered before a write to the pipe: fewer system calls and wake-ups
IOV_MAX = 1024  # buffers per writev (Linux's limit)
VERDICT_SECONDS = 60.0  # from the last byte written to the report (the child is ~1 MiB behind at most)
MAX_REPORT_BYTES = 16 * 1024 * 1024  # a report holds at most max_problems problems of each kind
WORKER = "tunegate.data.worker"  # the module the helper runs
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding this `tunegate` package


_REAPING: set[asyncio.Task[int]] = set()  # waits for killed helpers' exits (a task needs a reference)


class ValidatorFailed(APIError):
    """The helper process died or stopped answering: our failure, not the client's."""

    status = 500
    type = "server_error"
    code = "validator_failed"

    def __init__(self, why: str) -> None:
        super().__init__("The gateway could not validate the file (its validation process " + why + "); "
                         "nothing was stored. Retry the upload.", param="file")


class ValidatorProcess:
    """The parent's side of one helper: ``start``, ``feed`` each chunk, ``finish`` for the report;
    ``close`` (always, also after ``finish``) kills a helper still running.

    The bytes go through a pipe of our own (non-blocking write end, ``os.writev`` of the chunks as
    they are, no copy into a transport's buffer), gathered to ``BATCH`` bytes per system call.

    The child is started by :class:`subprocess.Popen`, not asyncio's subprocess support: CPython
    spawns with ``vfork``, so the serving process's pages are neither copied nor counted twice. uvloop
    forks: measured in a 90 MB process, 3.5-5.7 ms with the event loop held (and a momentary copy that
    a process tree's summed RSS shows as +88 MB), against 0.3-2.4 ms. Its report is read and its exit
    awaited on the loop (its stdout and its pidfd, non-blocking)."""

    #: helpers of this process not yet closed (the gateway caps them at its cores less one)
    running: ClassVar[int] = 0

    def __init__(self, proc: subprocess.Popen[bytes], pipe: int) -> None:
        ValidatorProcess.running += 1
        self._counted = True
        self._proc = proc
        assert proc.stdout is not None
        self._stdout = proc.stdout
        os.set_blocking(proc.stdout.fileno(), False)
        self._pipe: int | None = pipe
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._loop = asyncio.get_running_loop()
        self._waiting_since: float | None = None  # while feed() waits for the helper to take bytes
        self._writable: asyncio.Future[None] | None = None
        self._stalled = False
        self._watch = self._loop.call_later(WATCH_EVERY, self._check_stall)

    @classmethod
    async def start(cls, method: str, max_bytes: int) -> ValidatorProcess:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):  # not Linux, or over pipe-max-size: the default size
                fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_SIZE)
            os.set_blocking(write_end, False)
            # cwd: `-m` puts the working directory first on sys.path, so the child imports this package
            # vfork: returns once the child has exec'd, sooner than asyncio's spawn (see the class docstring)
            proc = subprocess.Popen([sys.executable, "-m", WORKER, method, str(max_bytes)],  # noqa: ASYNC220
                                    stdin=read_end, stdout=subprocess.PIPE, cwd=PACKAGE_ROOT)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)  # the child has its own copy
        return cls(proc, write_end)

    def _check_stall(self) -> None:
        """A helper that takes no byte for STALL_SECONDS is killed, which ends feed()'s wait. One timer
        per upload, not a timeout per chunk."""
        since = self._waiting_since
        if since is not None and self._loop.time() - since > STALL_SECONDS:
            self._stalled = True
            self._kill()
            self._wake()
            return
        self._watch = self._loop.call_later(WATCH_EVERY, self._check_stall)

    async def feed(self, chunk: bytes) -> None:
        """Hands ``chunk`` to the helper; waits only while the pipe is full (the helper is behind)."""
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes >= BATCH:
            await self._flush()

    async def _flush(self) -> None:
        while self._pending:
            if self._pipe is None or self._stalled:
                raise ValidatorFailed(await self._why())
            try:
                written = os.writev(self._pipe, self._pending[:IOV_MAX])
            except BlockingIOError:
                await self._until_writable()
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ValidatorFailed(await self._why()) from exc
            self._consume(written)

    def _consume(self, written: int) -> None:
        self._pending_bytes -= written
        pending = self._pending
        i = 0
        while i < len(pending) and written >= len(pending[i]):
            written -= len(pending[i])
            i += 1
        del pending[:i]
        if written:
            pending[0] = memoryview(pending[0])[written:]

    async def _until_writable(self) -> None:
        assert self._pipe is not None
        self._writable = self._loop.create_future()
        self._waiting_since = self._loop.time()
        self._loop.add_writer(self._pipe, self._wake)
        try:
            await self._writable
        finally:
            self._waiting_since = self._writable = None
            if self._pipe is not None:
                self._loop.remove_writer(self._pipe)

    def _wake(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            self._loop.remove_writer(self._pipe)
            os.close(self._pipe)
            self._pipe = None

    async def finish(self) -> Report:
        """The helper's report on everything fed."""
        await self._flush()
        self._close_pipe()  # the helper's end of file
        try:
            raw = await asyncio.wait_for(self._read_report(), VERDICT_SECONDS)
            code = await asyncio.wait_for(self.wait(), VERDICT_SECONDS)
        except TimeoutError as exc:
            raise ValidatorFailed(f"gave no verdict within {VERDICT_SECONDS:.0f} s") from exc
        if code != 0 or not raw:
            raise ValidatorFailed(f"exited with {code} and no report")
        try:
            return Report.from_dict(orjson.loads(raw))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValidatorFailed("gave an unreadable report") from exc

    async def _read_report(self) -> bytes:
        parts: list[bytes] = []
        size, out = 0, self._stdout.fileno()
        while True:
            try:
                data = os.read(out, 65536)
            except BlockingIOError:
                await self._ready(out)
                continue
            if not data:
                return b"".join(parts)
            parts.append(data)
            size += len(data)
            if size > MAX_REPORT_BYTES:
                raise ValueError("report too large")

    async def _ready(self, fd: int) -> None:
        """Until ``fd`` is readable (or, for a pidfd, its process has exited)."""
        ready = self._loop.create_future()
        self._loop.add_reader(fd, lambda: None if ready.done() else ready.set_result(None))
        try:
            await ready
        finally:
            self._loop.remove_reader(fd)

    async def wait(self) -> int:
        """The helper's exit status, once it has exited (and is reaped)."""
        if self._proc.poll() is not None:
            return self._proc.returncode
        try:
            pidfd = os.pidfd_open(self._proc.pid)
        except (AttributeError, OSError):  # not Linux 5.3 or later: poll
            while self._proc.poll() is None:  # noqa: ASYNC110 - nothing else reports the exit
                await asyncio.sleep(0.01)
            return self._proc.returncode
        try:
            await self._ready(pidfd)
        finally:
            os.close(pidfd)
        return self._proc.wait()  # it has exited: this only reaps it

    async def _why(self) -> str:
        if self._stalled:
            return f"took no data for {STALL_SECONDS:.0f} s"
        code: int | None = None
        with contextlib.suppress(TimeoutError):
            code = await asyncio.wait_for(self.wait(), 5.0)
        return f"exited with {code}"

    def _kill(self) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self) -> None:
        """Kills the helper if it still runs (a failed or cancelled upload) and has it reaped."""
        self._watch.cancel()
        self._kill()
        self._close_pipe()
        if not self._stdout.closed:
            self._stdout.close()
            if self._proc.returncode is None and not self._loop.is_closed():
                reaping = self._loop.create_task(self.wait())
                _REAPING.add(reaping)
                reaping.add_done_callback(_REAPING.discard)
        if self._counted:
            self._counted = False
            ValidatorProcess.running -= 1
