"""The bundle's own JSON files (``manifest.json``, ``replays.json``) may come from someone else: each is read
only up to ``bundle.MAX_JSON_BYTES``, and one that is too large, not UTF-8, not JSON or nested too deeply is
a BundleError naming the file (a message from the CLI), never a traceback or an unbounded read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.migration import bundle
from tunegate.migration.bundle import (
    FORMAT,
    MANIFEST,
    REPLAYS,
    VERSION,
    BundleError,
    load_manifest,
    load_replays,
)

runner = CliRunner()
MANIFEST_TEXT = json.dumps({"format": FORMAT, "version": VERSION, "bundle_id": "b-1", "jobs": [], "files": {}})


def make_root(tmp_path: Path, manifest: bytes | str = MANIFEST_TEXT) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    (root / MANIFEST).write_bytes(manifest.encode() if isinstance(manifest, str) else manifest)
    return root


def test_a_manifest_larger_than_the_bound_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_root(tmp_path)
    monkeypatch.setattr(bundle, "MAX_JSON_BYTES", len(MANIFEST_TEXT))
    assert load_manifest(root)["bundle_id"] == "b-1"  # exactly at the bound is fine
    monkeypatch.setattr(bundle, "MAX_JSON_BYTES", len(MANIFEST_TEXT) - 1)
    with pytest.raises(BundleError) as refused:
        load_manifest(root)
    assert str(root / MANIFEST) in str(refused.value) and f"{len(MANIFEST_TEXT) - 1} bytes" in str(refused.value)


def test_a_replay_record_larger_than_the_bound_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_root(tmp_path)
    (root / REPLAYS).write_text(json.dumps({"targets": {"together-ai": {"files": {}, "jobs": {}}}}))
    monkeypatch.setattr(bundle, "MAX_JSON_BYTES", 16)
    with pytest.raises(BundleError, match="larger than the 16 bytes") as refused:
        load_replays(root)
    assert str(root / REPLAYS) in str(refused.value)


def test_the_bound_is_checked_before_the_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_root(tmp_path)
    monkeypatch.setattr(bundle, "MAX_JSON_BYTES", 16)
    monkeypatch.setattr(Path, "read_text", lambda *a, **kw: pytest.fail("read the whole file"))
    monkeypatch.setattr(Path, "read_bytes", lambda *a, **kw: pytest.fail("read the whole file"))
    with pytest.raises(BundleError, match="larger than"):
        load_manifest(root)


@pytest.mark.parametrize("name, content", [
    ("not UTF-8", b'{"format": "\xff\xfe"}'),
    ("not JSON", b'{"format": '),
    ("nested too deeply", b"[" * 200_000),
])
def test_a_manifest_that_cannot_be_parsed_is_a_bundle_error(tmp_path: Path, name: str, content: bytes) -> None:
    root = make_root(tmp_path, content)
    with pytest.raises(BundleError, match="cannot read") as refused:
        load_manifest(root)
    assert str(root / MANIFEST) in str(refused.value)


@pytest.mark.parametrize("content", [b"\xff" * 10, b"[" * 200_000])
def test_replay_of_an_unparseable_manifest_is_a_message_not_a_traceback(tmp_path: Path, content: bytes) -> None:
    root = make_root(tmp_path, content)
    result = runner.invoke(app, ["migrate", "replay", str(root), "--to", "together-ai", "--dry-run", "--json",
                                 "--base", "*=meta-llama/Llama-3.2-1B-Instruct"], env={"COLUMNS": "1000"})
    assert result.exit_code == 1, result.output
    assert "cannot read" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_manifest_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO named manifest.json (a tar can carry one) blocked the reader forever."""
    root = tmp_path / "bundle"
    root.mkdir()
    os.mkfifo(root / MANIFEST)
    with pytest.raises(BundleError, match="not a regular file"):
        load_manifest(root)
