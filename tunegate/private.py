"""The gateway's data stays its own: directories 0700, files 0600, whatever the umask.

What lies under the data directory — the SQLite database (keys' hashes, sealed connection secrets, the
registry), the secret box's key file, managed files (training data), the trainer's checkpoints and
adapters — is readable by nobody but the gateway's user. A shared host's default umask (022) would
otherwise make every one of them world-readable.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import IO

DIR_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077  # for processes that only ever write the gateway's data (the server, the trainer)


def private_dir(path: Path) -> Path:
    """``path`` (and missing parents) created; ``path`` itself made 0700 when this user owns it."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _restrict(path, DIR_MODE)
    return path


def private_file(path: Path) -> None:
    """An existing file made 0600 (when this user owns it)."""
    _restrict(path, FILE_MODE)


def create_private(path: Path) -> IO[bytes]:
    """A new file opened for writing, created 0600 (never there before: ``O_EXCL``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    return os.fdopen(fd, "wb")


def secure_data_dir(data_dir: Path, database_url: str) -> None:
    """Before the database is opened: the data directory 0700, and a SQLite database file (with its WAL
    and shared-memory files, which SQLite creates with the database file's mode) 0600."""
    private_dir(data_dir)
    if not database_url.startswith("sqlite"):
        return
    path = database_url.split("///", 1)[-1]
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    db = Path(path)
    db.parent.mkdir(parents=True, exist_ok=True)  # made private only if it is the data directory
    if not db.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))  # SQLite takes an empty file
    for name in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")):
        if name.exists():
            private_file(name)


def _restrict(path: Path, mode: int) -> None:
    with contextlib.suppress(OSError):
        st = path.stat()
        # Not ours (a mounted volume's root), or a shared sticky directory such as /tmp named as the data
        # directory by mistake: leave it as it is.
        if st.st_uid != os.getuid() or st.st_mode & stat.S_ISVTX:
            return
        if st.st_mode & 0o777 != mode:
            os.chmod(path, mode)
