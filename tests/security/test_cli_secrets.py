"""Secrets reach the CLI without being on its command line (finding 19): ``-`` (stdin), ``@FILE``, the
environment; a literal still works but warns. The CLI runs as a real subprocess, the client commands
against a real gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.gateway import _TEST_FERNET_KEY, Gateway


def cli(data: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunegate", *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TUNEGATE_DATA_DIR": str(data),
                                           "TUNEGATE_SECRET_KEY": _TEST_FERNET_KEY, "COLUMNS": "200", **(env or {})})


def stored(data: Path, name: str) -> dict[str, Any]:
    with Gateway(data) as gw:
        connection = gw.with_store(lambda store: store.get_connection(name))
    assert connection is not None
    return dict(connection.secrets)


def test_connection_secrets_from_stdin_a_file_and_the_environment(tmp_path: Path) -> None:
    data = tmp_path / "d"
    (tmp_path / "token").write_text("file-secret-value-1\n")
    out = cli(data, "connections", "add", "team", "--provider", "openai", "--api-key", "-",
              "--secret", "second=-", "--secret", f"third=@{tmp_path / 'token'}", "--secret", "fourth-one",
              stdin="stdin-api-key-1\nstdin-secret-2\n", env={"TUNEGATE_SECRET_FOURTH_ONE": "env-secret-3"})
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr
    assert stored(data, "team") == {"api_key": "stdin-api-key-1", "second": "stdin-secret-2",
                                    "third": "file-secret-value-1", "fourth-one": "env-secret-3"}


def test_a_literal_secret_still_works_but_warns(tmp_path: Path) -> None:
    data = tmp_path / "d"
    out = cli(data, "connections", "add", "team", "--provider", "openai", "--api-key", "sk-literal-000000",
              "--secret", "other=literal-2")
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("visible to other users") == 2
    assert stored(data, "team") == {"api_key": "sk-literal-000000", "other": "literal-2"}


def test_a_missing_source_is_a_one_line_error(tmp_path: Path) -> None:
    out = cli(tmp_path / "d", "connections", "add", "team", "--provider", "openai", "--secret", "nothing_here")
    assert out.returncode != 0 and "TUNEGATE_SECRET_NOTHING_HERE" in out.stderr
    out = cli(tmp_path / "d", "connections", "add", "team", "--provider", "openai", "--api-key",
              f"@{tmp_path / 'absent'}")
    assert out.returncode != 0 and "cannot read" in out.stderr and "Traceback" not in out.stderr


def test_client_commands_read_the_key_from_stdin_a_file_or_the_environment(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d") as gw:
        async def setup(store):  # type: ignore[no-untyped-def]
            await store.add_connection("kept", "tunegate", {})  # the gateway's own file store
            return (await store.create_key("ci", ["*"]))[1]

        key = gw.with_store(setup)
        (tmp_path / "key").write_text(key + "\n")
        base = {"TUNEGATE_URL": gw.url, "TUNEGATE_PROVIDER": "tunegate"}
        ways = [(["--api-key", "-"], key + "\n", {}), ([f"--api-key=@{tmp_path / 'key'}"], "", {}),
                ([], "", {"TUNEGATE_API_KEY_FILE": str(tmp_path / "key")}), ([], "", {"TUNEGATE_API_KEY": key})]
        for args, stdin, env in ways:
            out = cli(tmp_path / "d", "files", "list", "--json", *args, stdin=stdin, env={**base, **env})
            assert out.returncode == 0, (args, env, out.stderr)
            assert json.loads(out.stdout) == [] and "warning" not in out.stderr
        literal = cli(tmp_path / "d", "files", "list", "--json", "--api-key", key, env=base)
        assert literal.returncode == 0 and "visible to other users" in literal.stderr
