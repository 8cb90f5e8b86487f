"""A migration bundle may come from someone else; every path it names stays inside it (``bundle.member``).
Before, a manifest entry's ``path`` was joined to the bundle directory as it stood: ``/home/me/.ssh/x``,
``../../x`` or a link ``files/f/x.jsonl -> /anywhere`` made ``migrate replay`` read that file (its
examples counted in --dry-run) and upload it to the target backend, ``migrate record`` send its lines to a
model, and ``migrate export``, completing a prepared directory, hash a file anywhere or write through a
linked ``files/`` or ``.part``. Now such a bundle is refused whole, with a message naming the entry."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.migration import api, export, record
from tunegate.migration.bundle import (
    FORMAT,
    MANIFEST,
    REPLAYS,
    VERSION,
    BundleError,
    load_manifest,
    load_replays,
)
from tunegate.migration.replay import plan

runner = CliRunner()
SECRET = "SECRET-TOKEN-0123456789"
LINE = json.dumps({"messages": [{"role": "user", "content": SECRET}, {"role": "assistant", "content": "ok"}]}) + "\n"


def make_bundle(tmp_path: Path, path: Any) -> tuple[Path, Path]:
    """A bundle whose one job trains on a file the manifest says lies at ``path``; and, beside the bundle
    (outside it), a file that looks like training data and holds a secret."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text(LINE * 3)
    root = tmp_path / "bundle"
    (root / "files" / "file-1").mkdir(parents=True)
    (root / "files" / "file-1" / "train.jsonl").write_text(LINE.replace(SECRET, "hello") * 3)
    manifest = {"format": FORMAT, "version": VERSION, "bundle_id": "b-1", "complete": True, "errors": [],
                "jobs": [{"id": "ftjob-1", "status": "succeeded", "model": "gpt-4o-mini-2024-07-18",
                          "fine_tuned_model": "ft:gpt-4o-mini:o::1", "training_file": "file-1",
                          "hyperparameters": {"n_epochs": 1}}],
                "files": {"file-1": {"id": "file-1", "filename": "train.jsonl", "bytes": 1, "sha256": "0" * 64,
                                     "path": path}}}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root, outside / "secret.jsonl"


def outside_paths(tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / "outside" / "secret.jsonl"
    return {"absolute": str(secret), "dot-dot": "../outside/secret.jsonl",
            "dot-dot inside": "files/file-1/../../../outside/secret.jsonl",
            "a NUL": "files/file-1/train.jsonl\x00", "not a string": 12, "empty": "", "too long": "a/" * 600}


NAMES = ["absolute", "dot-dot", "dot-dot inside", "a NUL", "not a string", "empty", "too long"]


@pytest.mark.parametrize("name", NAMES)
def test_a_manifest_path_outside_the_bundle_is_refused(tmp_path: Path, name: str) -> None:
    root, _secret = make_bundle(tmp_path, outside_paths(tmp_path)[name])
    with pytest.raises(BundleError) as refused:
        load_manifest(root)
    assert "file 'file-1'" in str(refused.value) and "refusing a bundle" in str(refused.value)


def test_a_file_linked_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    root, secret = make_bundle(tmp_path, "files/file-1/train.jsonl")
    (root / "files" / "file-1" / "train.jsonl").unlink()
    (root / "files" / "file-1" / "train.jsonl").symlink_to(secret)
    with pytest.raises(BundleError, match="symbolic link"):
        load_manifest(root)


def test_a_directory_linked_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    root, secret = make_bundle(tmp_path, "files/file-1/secret.jsonl")
    (root / "files" / "file-1" / "train.jsonl").unlink()
    (root / "files" / "file-1").rmdir()
    (root / "files" / "file-1").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(BundleError, match="symbolic link"):
        load_manifest(root)


def test_the_bundles_own_json_files_linked_out_are_refused(tmp_path: Path) -> None:
    root, secret = make_bundle(tmp_path, "files/file-1/train.jsonl")
    (secret.parent / "replays.json").write_text(json.dumps({"targets": {"together-ai": {"files": {}, "jobs": {}}}}))
    (root / REPLAYS).symlink_to(secret.parent / "replays.json")
    with pytest.raises(BundleError, match="the replay record"):
        load_manifest(root)
    with pytest.raises(BundleError, match="the replay record"):
        load_replays(root)
    (root / REPLAYS).unlink()
    (secret.parent / MANIFEST).write_text((root / MANIFEST).read_text())
    (root / MANIFEST).unlink()
    (root / MANIFEST).symlink_to(secret.parent / MANIFEST)
    with pytest.raises(BundleError, match="the manifest"):
        load_manifest(root)


@pytest.mark.parametrize("manifest", [{"jobs": {"a": 1}}, {"jobs": ["x"]}, {"files": []}, {"files": {"f": "x"}}])
def test_a_manifest_of_the_wrong_shape_is_a_clear_error(tmp_path: Path, manifest: dict[str, Any]) -> None:
    root = tmp_path / "bundle"
    root.mkdir()
    (root / MANIFEST).write_text(json.dumps({"format": FORMAT, "version": VERSION, "bundle_id": "b", **manifest}))
    with pytest.raises(BundleError, match="must be"):
        load_manifest(root)


def test_paths_and_links_inside_the_bundle_are_fine(tmp_path: Path) -> None:
    root, _secret = make_bundle(tmp_path, "files/file-1/train.jsonl")
    assert load_manifest(root)["files"]["file-1"]["path"] == "files/file-1/train.jsonl"
    (root / "files" / "file-2").mkdir()
    (root / "files" / "file-2" / "copy.jsonl").symlink_to(root / "files" / "file-1" / "train.jsonl")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"]["file-1"]["path"] = "files/file-2/copy.jsonl"  # a link within the bundle
    (root / MANIFEST).write_text(json.dumps(manifest))
    [job] = plan(root, load_manifest(root), "together-ai", {"*": "meta-llama/Llama-3.2-1B-Instruct"})
    assert job.files[0].path is not None and job.files[0].examples == 3


@pytest.mark.parametrize("name", NAMES)
def test_replay_dry_run_refuses_the_bundle_without_reading_the_file(tmp_path: Path, name: str) -> None:
    root, _secret = make_bundle(tmp_path, outside_paths(tmp_path)[name])
    result = runner.invoke(app, ["migrate", "replay", str(root), "--to", "together-ai", "--dry-run", "--json",
                                 "--base", "*=meta-llama/Llama-3.2-1B-Instruct"], env={"COLUMNS": "1000"})
    assert result.exit_code == 1, result.output
    assert "refusing a bundle" in result.output and '"examples"' not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a message, not a traceback


def test_plan_never_reads_a_file_outside_the_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner checks again (a manifest handed to it without load_manifest): the file is a blocker,
    so the replay never uploads it."""
    root, secret = make_bundle(tmp_path, "../outside/secret.jsonl")
    read: list[Path] = []
    monkeypatch.setattr("tunegate.migration.replay.validate_path", lambda path, **kw: read.append(path))
    manifest = json.loads((root / MANIFEST).read_text())
    [job] = plan(root, manifest, "together-ai", {"*": "meta-llama/Llama-3.2-1B-Instruct"})
    assert job.files[0].path is None and not job.replayable and not read
    assert any("refusing a bundle" in b for b in job.mapped.blockers), job.mapped.blockers


def test_record_takes_no_prompts_from_outside_the_bundle(tmp_path: Path) -> None:
    root, _secret = make_bundle(tmp_path, "../outside/secret.jsonl")
    with pytest.raises(record.RecordError, match="refusing a bundle"):
        record.bundle_prompts(root, "ft:gpt-4o-mini:o::1")


def test_record_never_appends_through_a_link_out_of_the_bundle(tmp_path: Path) -> None:
    root, secret = make_bundle(tmp_path, "files/file-1/train.jsonl")
    (root / "recorded").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(record.RecordError, match="symbolic link"):
        record.default_output(root, "ft:gpt-4o-mini:o::1")


def test_export_never_hashes_a_file_an_old_manifest_names_outside(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root, secret = make_bundle(tmp_path, "../outside/secret.jsonl")
    hashed: list[Path] = []
    monkeypatch.setattr(export, "sha256_of", lambda path: hashed.append(path) or "0" * 64)
    entry = {"path": "../outside/secret.jsonl", "sha256": "0" * 64, "bytes": secret.stat().st_size}
    assert export._intact(root, entry) is False and not hashed


def test_export_never_writes_through_a_linked_files_directory(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root, secret = make_bundle(tmp_path, "files/file-1/train.jsonl")
    (root / "files" / "file-1" / "train.jsonl").unlink()
    (root / "files" / "file-1").rmdir()
    (root / "files").rmdir()
    (root / "files").symlink_to(secret.parent, target_is_directory=True)
    before = sorted(p.name for p in secret.parent.iterdir())
    monkeypatch.setattr(export, "file_info", lambda client, file_id: {
        "id": file_id, "filename": "train.jsonl", "status": "processed", "bytes": 3})
    monkeypatch.setattr(export, "download", lambda *a, **kw: pytest.fail("downloaded through the link"))
    with pytest.raises(BundleError, match="symbolic link"):
        export._export_file(None, root, "file-9", [], None, None)  # type: ignore[arg-type]
    assert sorted(p.name for p in secret.parent.iterdir()) == before


class _Answer:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self, n: int = -1) -> bytes:
        out, self.body = self.body, b""
        return out


class _Client:
    def open(self, method: str, path: str, **kw: Any) -> _Answer:
        return _Answer(b"new bytes")


def test_a_planted_part_link_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "bundle" / "x.jsonl"
    target.parent.mkdir()
    os.symlink(victim, str(target) + ".part")
    got = api.download(_Client(), "file-1", target)  # type: ignore[arg-type]
    assert got.bytes == 9 and target.read_bytes() == b"new bytes" and not target.is_symlink()
    assert victim.read_text() == "keep me"
