"""The bundle on disk: ``manifest.json`` (what was exported), ``files/<id>/<name>`` (the bytes) and
``replays.json`` (what each replay created). Every JSON file is written whole to a temporary name and
renamed, so a reader never sees half of one.

A bundle may come from someone else: every path it names (a manifest entry's ``path``, and the bundle's
own JSON files) must stay inside the bundle directory (``member``): no absolute path, no ``..``, no
symbolic link leading out. Otherwise a replay would read (and upload) any file of the machine it runs on,
and an export into a prepared directory would write through a link to anywhere."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

FORMAT = "tunegate-migration-bundle"
VERSION = 1
MANIFEST = "manifest.json"
REPLAYS = "replays.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PATH_CHARS = 1024
# The most bytes ``read_json`` reads of one of the bundle's JSON files. A bundle may come from someone else,
# and its JSON is parsed whole in memory (several times the file's size as Python objects), so an unbounded
# file could exhaust the memory of the machine that replays it. A manifest holds one entry per job and per
# file: 64 MiB is far beyond any real export's, and bounds what a hostile bundle can make a reader hold.
MAX_JSON_BYTES = 64 * 1024 * 1024


class BundleError(ValueError):
    pass


def write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """The JSON value in ``path`` (None when there is no such file), or a BundleError naming the file when it
    is larger than MAX_JSON_BYTES, unreadable, not UTF-8, not JSON or nested too deeply to parse."""
    try:
        # Non-blocking open, then a regular file only: a FIFO or device named manifest.json (a tar can carry
        # one) would otherwise block the reader forever or never end.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise BundleError(f"{path} is not a regular file")
            size = info.st_size
            # Read one byte past the bound: a file that grows, or reports no size, is caught all the same.
            raw = fh.read(MAX_JSON_BYTES + 1) if size <= MAX_JSON_BYTES else b""
        if size > MAX_JSON_BYTES or len(raw) > MAX_JSON_BYTES:
            raise BundleError(f"{path} is larger than the {MAX_JSON_BYTES} bytes this tunegate reads of a "
                              "bundle's JSON file; refusing it")
        return json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        return None
    except BundleError:
        raise
    except RecursionError:
        raise BundleError(f"cannot read {path}: its JSON is nested too deeply") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None


def safe_name(name: str | None, fallback: str) -> str:
    """A provider's filename as one harmless path segment (no separators, no dot-dot, bounded)."""
    cleaned = _UNSAFE.sub("_", Path(name or "").name).strip("._")[:120]
    return cleaned or fallback


def file_path(root: Path, file_id: str, filename: str | None) -> Path:
    """Where a file's bytes live: under its own id, keeping the original name for the re-upload."""
    return root / "files" / safe_name(file_id, "file") / safe_name(filename, "content")


def member(root: Path, relative: object, what: str) -> Path:
    """``root / relative`` when that is a path inside the bundle, else a BundleError naming ``what``: a
    relative path (``/``-separated, as export writes it) without ``..``, that does not lead out of ``root``
    through a symbolic link (links within the bundle are fine)."""
    def outside(why: str) -> BundleError:
        shown = relative[:200] if isinstance(relative, str) else type(relative).__name__
        return BundleError(f"{what} is {shown!r}, {why}; refusing a bundle that names paths outside itself")

    if not isinstance(relative, str) or not relative or len(relative) > MAX_PATH_CHARS or "\x00" in relative:
        raise outside(f"not a relative path of 1-{MAX_PATH_CHARS} characters")
    pure = PurePosixPath(relative)
    if pure.is_absolute():
        raise outside("an absolute path")
    if ".." in pure.parts:
        raise outside("a path that climbs out with '..'")
    try:
        base = root.resolve()
        inside = (base / pure).resolve().is_relative_to(base)
    except (OSError, RuntimeError) as exc:  # a link loop
        raise outside(f"a path that cannot be followed ({exc})") from None
    if not inside:
        raise outside("a symbolic link that leads outside the bundle")
    return root / pure


def _checked(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest, after its shape and every path it names are checked."""
    jobs = manifest.get("jobs")
    if jobs is not None and not (isinstance(jobs, list) and all(isinstance(j, dict) for j in jobs)):
        raise BundleError(f"{root / MANIFEST}: 'jobs' must be a list of job objects")
    files = manifest.get("files")
    if files is not None and not (isinstance(files, dict) and all(isinstance(e, dict) for e in files.values())):
        raise BundleError(f"{root / MANIFEST}: 'files' must be an object of file entries")
    for file_id, entry in (files or {}).items():
        if entry.get("path") is not None:
            member(root, entry["path"], f"{root / MANIFEST}: the path of file {str(file_id)[:200]!r}")
    member(root, REPLAYS, "the replay record")
    return manifest


def load_manifest(root: Path) -> dict[str, Any]:
    manifest = read_json(member(root, MANIFEST, "the manifest"))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{root} is not a migration bundle (no {MANIFEST} of format {FORMAT!r}); "
                          "create one with 'tunegate migrate export'")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{root / MANIFEST} has version {manifest.get('version')}; this tunegate reads {VERSION}")
    return _checked(root, manifest)


def load_replays(root: Path) -> dict[str, Any]:
    data = read_json(member(root, REPLAYS, "the replay record"))
    return data if isinstance(data, dict) else {"format": "tunegate-migration-replays", "version": 1, "targets": {}}
