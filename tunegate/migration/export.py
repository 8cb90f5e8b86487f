"""``tunegate migrate export DIR``: every referenced file streamed to disk with its sha256, and every job's
full object, as a bundle (``bundle.py``).

Resumable: the manifest is rewritten (atomically) after each file, so a run that stops keeps what it
finished; it says ``"complete": false`` until a run ends with every file in place. A second run downloads
only what is missing from disk or whose sha256 no longer matches the manifest's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunegate.client.http import Client, GatewayError

from .api import download, every_job, file_info, sha256_of
from .bundle import FORMAT, MANIFEST, VERSION, BundleError, file_path, member, read_json, write_json
from .inventory import job_files

Progress = Callable[[str, int, int | None], None]


def _previous(root: Path) -> dict[str, Any]:
    old = read_json(root / MANIFEST)
    return old if isinstance(old, dict) and old.get("format") == FORMAT else {}


def _intact(root: Path, entry: dict[str, Any] | None) -> bool:
    """Whether a file the manifest lists is on disk with the recorded sha256."""
    if not entry or not entry.get("sha256") or not entry.get("path"):
        return False
    try:  # a path an earlier manifest names outside the bundle is never read: the file is fetched anew
        path = member(root, entry["path"], "its path")
    except BundleError:
        return False
    return path.is_file() and path.stat().st_size == entry.get("bytes") and sha256_of(path) == entry["sha256"]


def export(client: Client, provider: str, root: Path, progress: Progress | None = None,
           chunk_progress: Callable[[int], None] | None = None) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Write or complete the bundle under ``root``; returns the manifest and which files this run
    downloaded and which it kept from an earlier run."""
    root.mkdir(parents=True, exist_ok=True)
    old = _previous(root)
    jobs = list(every_job(client, on_page=lambda n: progress("jobs", n, None) if progress else None))
    refs: dict[str, list[dict[str, str]]] = {}
    for job in jobs:
        for file_id, role in job_files(job):
            refs.setdefault(file_id, []).append({"job": str(job["id"]), "role": role})
    manifest: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        # The bundle keeps its id across runs: replays derive their idempotency keys from it.
        "bundle_id": old.get("bundle_id") or str(uuid.uuid4()),
        "source": {"provider": provider, "connection": client.connection, "gateway": client.url},
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"), "complete": False,
        "jobs": sorted(jobs, key=lambda j: str(j.get("id"))), "files": {}, "errors": [],
    }
    write_json(root / MANIFEST, manifest)
    previous_files: dict[str, Any] = old["files"] if isinstance(old.get("files"), dict) else {}
    fetched: dict[str, list[str]] = {"downloaded": [], "kept": [], "failed": []}
    for file_id in sorted(refs):
        entry, how = _export_file(client, root, file_id, refs[file_id], previous_files.get(file_id), chunk_progress)
        fetched[how].append(file_id)
        manifest["files"][file_id] = entry
        if entry.get("error"):
            manifest["errors"].append({"file": file_id, "error": entry["error"]})
        write_json(root / MANIFEST, manifest)
        if progress:
            progress("files", 1, len(refs))
    manifest["complete"] = not manifest["errors"]
    write_json(root / MANIFEST, manifest)
    return manifest, fetched


def _export_file(client: Client, root: Path, file_id: str, used_by: list[dict[str, str]],
                 before: dict[str, Any] | None,
                 chunk_progress: Callable[[int], None] | None) -> tuple[dict[str, Any], str]:
    if _intact(root, before):
        assert before is not None
        return {**before, "used_by": used_by}, "kept"
    info = file_info(client, file_id)
    entry: dict[str, Any] = {"id": file_id, "filename": info.get("filename"), "purpose": info.get("purpose"),
                             "status": info.get("status"), "created_at": info.get("created_at"), "used_by": used_by}
    if info.get("status") == "missing":
        return {**entry, "error": info.get("error") or "the provider no longer has this file"}, "failed"
    target = file_path(root, file_id, info.get("filename"))
    # A directory being completed may hold links: files/ or files/<id> leading elsewhere is refused
    # before a byte is written through it (the .part file is created anew, never opened through a link).
    member(root, str(target.relative_to(root)), f"the directory for {file_id}")
    target.parent.mkdir(parents=True, exist_ok=True)
    expected = info.get("bytes") if isinstance(info.get("bytes"), int) else None
    try:
        got = download(client, file_id, target, chunk_progress, expected)
    except GatewayError as exc:
        return {**entry, "bytes": expected, "error": str(exc)}, "failed"
    return {**entry, "bytes": got.bytes, "sha256": got.sha256, "path": str(target.relative_to(root))}, "downloaded"
