"""`tunegate migrate record` over real sockets: the CLI → the gateway's /v1/chat/completions → an
OpenAI stand-in whose tuned model answers each prompt; prompts from the exported bundle or a file;
interrupted runs completed without duplicates; rate limit and concurrency as measured at the stand-in."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.migration.conftest import VALIDATION
from tests.migration.evalkit import Rig, old_answer, prompts_file, rig  # noqa: F401 - the fixture
from tunegate.cli import app
from tunegate.data.validator import validate_path
from tunegate.migration import record as rec

runner = CliRunner()


def tg(r: Rig, *args: str) -> Any:
    return runner.invoke(app, list(args), env=r.cli_env)


def ok_json(r: Rig, *args: str) -> Any:
    result = tg(r, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def chats(r: Rig) -> int:
    return len([q for q in r.source.requests if q.path.endswith("/chat/completions")])


def test_record_from_the_bundle_uses_the_models_own_validation_file(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    bundle = tmp_path / "bundle"
    assert ok_json(rig, "migrate", "export", str(bundle), "--from", "openai", "--connection", "src")["complete"]
    model = rig.tuned()
    got = ok_json(rig, "migrate", "record", "--model", model, "--bundle", str(bundle), "--connection", "src",
                  "--seed", "5", "--max-tokens", "64")
    assert got["role"] == "validation" and got["job"] == rig.jobs["supervised"]
    assert got["recorded"] == 4 and got["already_recorded"] == 0 and got["complete"] and got["valid"] is True
    out = Path(got["out"])
    assert out == bundle / "recorded" / (rec.safe_name(model, "m") + ".jsonl")
    held = [json.loads(x)["messages"] for x in VALIDATION.decode().splitlines()]
    answers = lines(out)
    # Each line: the held-out prompt (every message before the last assistant turn) + the model's answer.
    assert sorted(json.dumps(a["messages"][:-1]) for a in answers) == sorted(json.dumps(h[:-1]) for h in held)
    for a in answers:
        prompt, answer = a["messages"][:-1], a["messages"][-1]
        assert answer == {"role": "assistant", "content": old_answer(prompt[-1]["content"])}
    meta = lines(rec.meta_path(out))
    assert len(meta) == 4 and len({m["key"] for m in meta}) == 4
    first = meta[0]
    assert first["request"] == {"model": model, "temperature": 0.0, "top_p": None, "max_tokens": 64, "seed": 5}
    assert first["finish_reason"] == "stop" and first["usage"]["prompt_tokens"] == 7
    assert first["seconds"] >= 0 and first["recorded_at"] and first["response_id"].startswith("chatcmpl-")
    assert first["reference"] == old_answer(answers[0]["messages"][-2]["content"])
    sent = [json.loads(q.body) for q in rig.source.requests if q.path.endswith("/chat/completions")]
    assert {(b["model"], b["temperature"], b["seed"], b["max_tokens"]) for b in sent} == {(model, 0.0, 5, 64)}
    assert validate_path(out).ok

    # Run again: nothing asked, nothing written.
    before = chats(rig)
    again = ok_json(rig, "migrate", "record", "--model", model, "--bundle", str(bundle), "--connection", "src",
                    "--seed", "5", "--max-tokens", "64")
    assert again["recorded"] == 0 and again["already_recorded"] == 4 and chats(rig) == before
    assert len(lines(out)) == 4
    # Other settings into the same file would mix two recordings: refused, by name.
    other = tg(rig, "migrate", "record", "--model", model, "--bundle", str(bundle), "--connection", "src")
    assert other.exit_code == 1 and "recorded with other settings" in other.output and "--out" in other.output


def test_record_interrupted_between_answer_and_meta_then_completed(rig: Rig, tmp_path: Path,  # noqa: F811
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = prompts_file(tmp_path / "prompts.jsonl", 12, dup=2)  # 14 lines, 12 distinct prompts
    out = tmp_path / "rec.jsonl"
    args = ("migrate", "record", "--model", rig.tuned(), "--prompts", str(prompts), "--out", str(out),
            "--connection", "src", "--concurrency", "3")
    real, calls = rec._fsync_append, []

    def dies_before_the_sixth_meta_line(fh: Any, obj: Any) -> None:
        calls.append(1)
        if len(calls) == 12:  # the 6th answer is on disk, its meta line is not
            raise KeyboardInterrupt
        real(fh, obj)

    monkeypatch.setattr(rec, "_fsync_append", dies_before_the_sixth_meta_line)
    assert tg(rig, *args).exit_code != 0
    monkeypatch.setattr(rec, "_fsync_append", real)
    assert len(lines(out)) == 6 and len(lines(rec.meta_path(out))) == 5
    with rec.meta_path(out).open("ab") as fh:  # and a kill half-way through a meta line
        fh.write(b'{"key": "abc", "requ')

    done = ok_json(rig, *args)
    assert done["already_recorded"] == 5 and done["recorded"] == 7 and done["duplicates"] == 2
    assert done["trimmed_lines"] == 2 and done["complete"] and done["valid"] is True
    answers, meta = lines(out), lines(rec.meta_path(out))
    assert len(answers) == len(meta) == 12
    asked = [a["messages"][-2]["content"] for a in answers]
    assert sorted(asked) == sorted(f"Echo {i}" for i in range(12))  # each prompt once: no duplicates, none missing
    assert len({m["key"] for m in meta}) == 12
    for a, m in zip(answers, meta, strict=True):  # line n of the answers is line n of the meta
        assert m["line"] == int(a["messages"][-2]["content"].split()[1]) + 1
        assert a["messages"][-1]["content"] == a["messages"][-2]["content"].split()[1]


def test_record_keeps_to_the_rate_and_the_concurrency(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    rig.old.flight.delay = 0.3
    prompts = prompts_file(tmp_path / "p.jsonl", 9)
    got = ok_json(rig, "migrate", "record", "--model", rig.tuned(), "--prompts", str(prompts), "--out",
                  str(tmp_path / "a.jsonl"), "--connection", "src", "--concurrency", "3")
    assert got["recorded"] == 9 and rig.old.flight.most == 3

    rig.old.flight.delay, rig.old.flight.most, rig.old.flight.arrivals = 0.0, 0, []
    started = time.monotonic()
    got = ok_json(rig, "migrate", "record", "--model", rig.tuned(), "--prompts", str(prompts), "--out",
                  str(tmp_path / "b.jsonl"), "--connection", "src", "--concurrency", "8", "--rate", "10/s")
    assert got["recorded"] == 9
    arrivals = rig.old.flight.arrivals
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    # 9 requests 0.1 s apart as sent; measured behind the gateway, so with some jitter
    assert min(gaps) >= 0.04 and arrivals[-1] - arrivals[0] >= 0.75 and time.monotonic() - started >= 0.8


def test_record_reports_what_the_gateway_refuses_and_finishes_later(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    prompts = prompts_file(tmp_path / "p.jsonl", 3)
    bad = {"messages": [{"role": "narrator", "content": "x"}, {"role": "user", "content": "Echo 9"},
                        {"role": "assistant", "content": "9"}]}
    with prompts.open("a") as fh:
        fh.write(json.dumps(bad) + "\n" + "not json\n")
    out = tmp_path / "rec.jsonl"
    args = ("migrate", "record", "--model", rig.tuned(), "--prompts", str(prompts), "--out", str(out),
            "--connection", "src")
    result = tg(rig, *args, "--json")
    assert result.exit_code == 1
    got = json.loads(result.stdout)
    assert got["recorded"] == 3 and got["complete"] is False and got["skipped"] == ["line 5: not JSON"]
    assert got["failed"][0]["line"] == 4 and "messages[0].role" in got["failed"][0]["error"]
    assert chats(rig) == 3  # the 400 is the gateway's own, never sent upstream nor retried
    human = tg(rig, *args)
    assert human.exit_code == 1 and "line 4:" in human.output and "3 of 4 prompt(s)" in human.output
    lines_now = prompts.read_text().splitlines()
    prompts.write_text("\n".join(lines_now[:3] + [json.dumps({**bad, "messages": bad["messages"][1:]})]) + "\n")
    fixed = ok_json(rig, *args)
    assert fixed["recorded"] == 1 and fixed["already_recorded"] == 3 and fixed["complete"]


def test_record_needs_prompts_or_a_bundle(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    result = tg(rig, "migrate", "record", "--model", rig.tuned())
    assert result.exit_code == 1 and "--bundle DIR" in result.output
    (tmp_path / "b").mkdir()
    result = tg(rig, "migrate", "record", "--model", rig.tuned(), "--bundle", str(tmp_path / "b"))
    assert result.exit_code == 1 and "is not a migration bundle" in result.output


def test_held_out_turns() -> None:
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
            "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert rec.held_out(chat) == (chat["messages"][:3], "d", {"tools": chat["tools"]})
    dpo = {"input": {"messages": [{"role": "user", "content": "hi"}]},
           "preferred_output": [{"role": "assistant", "content": "hello"}], "non_preferred_output": []}
    assert rec.held_out(dpo) == ([{"role": "user", "content": "hi"}], "hello", {})
    assert rec.held_out({"messages": [{"role": "user", "content": "only"}]}) == (
        [{"role": "user", "content": "only"}], None, {})
    assert rec.held_out({"messages": [{"role": "assistant", "content": "no user"}]}) is None
    assert rec.prompt_key([{"role": "user", "content": "x"}], {"seed": 1}) != \
        rec.prompt_key([{"role": "user", "content": "x"}], {"seed": 2})
