"""The gateway's data is its user's alone under the default umask (finding 20): the data directory and
the managed store's folders 0700; the SQLite database (and its WAL files), the secret box's key file and
managed files 0600. Checked on ``tunegate serve`` and on the in-process server (no umask help there).
The trainer's artifacts are checked in test_local_limits.py (a real training run)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.gateway import Gateway
from tests.process import ServeProcess

FORM = {"purpose": (None, "fine-tune")}
LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.fixture(autouse=True)
def shared_host_umask() -> Iterator[None]:
    old = os.umask(0o022)  # a typical shared host's default: group and others may read
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def upload(url: str) -> str:
    r = requests.post(url + "/v1/files", files={**FORM, "file": ("t.jsonl", LINE * 20)}, timeout=30,
                      headers={"x-portkey-provider": "tunegate"})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def assert_private(data: Path, key_file: bool) -> None:
    assert mode(data) == 0o700
    assert mode(data / "tunegate.db") == 0o600
    for name in ("tunegate.db-wal", "tunegate.db-shm"):
        assert not (data / name).exists() or mode(data / name) == 0o600, name
    assert not key_file or mode(data / "secret.key") == 0o600
    for folder in ("files", "files/objects", "files/tmp"):
        assert mode(data / folder) == 0o700, folder
    objects = list((data / "files" / "objects").iterdir())
    assert objects and all(mode(p) == 0o600 for p in objects)


def test_tunegate_serve_keeps_its_data_private(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with ServeProcess(data, env={"TUNEGATE_SECRET_KEY": ""}) as gw:  # "" : the key file in the data directory
        upload(gw.url)
        assert_private(data, key_file=True)


def test_the_in_process_server_keeps_its_data_private_without_a_umask(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with Gateway(data) as gw:  # no `tunegate serve`, so no umask of its own: every mode is explicit
        upload(gw.url)
        assert_private(data, key_file=False)


def test_the_secret_box_key_file_and_its_folder(tmp_path: Path) -> None:
    from tunegate.store.secretbox import SecretBox

    SecretBox.from_settings(None, tmp_path / "fresh")
    assert mode(tmp_path / "fresh") == 0o700 and mode(tmp_path / "fresh" / "secret.key") == 0o600


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir(mode=0o755)
    (data / "tunegate.db").touch(mode=0o644)
    os.chmod(data / "tunegate.db", 0o644)
    with Gateway(data) as gw:
        upload(gw.url)
    assert mode(data) == 0o700 and mode(data / "tunegate.db") == 0o600
