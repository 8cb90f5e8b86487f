"""The bundle on disk: ``manifest.json`` (what was exported), ``files/<id>/<name>`` (the bytes) and
``replays.json`` (what each replay created). Every JSON file is written whole to a temporary name and
renamed, so a reader never sees half of one."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

FORMAT = "tunegate-migration-bundle"
VERSION = 1
MANIFEST = "manifest.json"
REPLAYS = "replays.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


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
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None


def safe_name(name: str | None, fallback: str) -> str:
    """A provider's filename as one harmless path segment (no separators, no dot-dot, bounded)."""
    cleaned = _UNSAFE.sub("_", Path(name or "").name).strip("._")[:120]
    return cleaned or fallback


def file_path(root: Path, file_id: str, filename: str | None) -> Path:
    """Where a file's bytes live: under its own id, keeping the original name for the re-upload."""
    return root / "files" / safe_name(file_id, "file") / safe_name(filename, "content")


def load_manifest(root: Path) -> dict[str, Any]:
    manifest = read_json(root / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{root} is not a migration bundle (no {MANIFEST} of format {FORMAT!r}); "
                          "create one with 'tunegate migrate export'")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{root / MANIFEST} has version {manifest.get('version')}; this tunegate reads {VERSION}")
    return manifest


def load_replays(root: Path) -> dict[str, Any]:
    data = read_json(root / REPLAYS)
    return data if isinstance(data, dict) else {"format": "tunegate-migration-replays", "version": 1, "targets": {}}
