"""The last two steps of the migration path end to end, through the CLI over real sockets: export the
OpenAI side, record its tuned model's answers, replay the job onto Together (stand-in), then
`tunegate eval` compares the recorded answers (A) with the new model's live ones (B), with
string_check + text_similarity + a score_model and a label_model judged by a stand-in model + multi;
the report is written and the dashboard's job page lists the run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

from tests.migration.evalkit import JUDGE, Rig, rig  # noqa: F401 - the fixture
from tunegate.cli import app

runner = CliRunner()

GRADERS = [
    {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.reference}}",
     "operation": "eq"},
    {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
     "reference": "{{item.reference}}", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.9},
    {"type": "text_similarity", "name": "rouge", "input": "{{sample.output_text}}",
     "reference": "{{item.reference}}", "evaluation_metric": "rouge_l"},
    {"type": "score_model", "name": "judge", "model": "gpt-4o-2024-08-06", "range": [0, 1], "input": [
        {"role": "system", "content": "Compare the answer with the reference."},
        {"role": "user", "content": "Prompt: {{item.prompt}}\nReference: {{item.reference}}\n"
                                    "Answer: {{sample.output_text}}"}]},
    {"type": "label_model", "name": "verdict", "model": "gpt-4o-2024-08-06", "labels": ["correct", "incorrect"],
     "passing_labels": ["correct"], "input": [
        {"role": "user", "content": "Reference: {{item.reference}}\nAnswer: {{sample.output_text}}"}]},
    {"type": "multi", "name": "overall", "graders": {
        "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                  "reference": "{{item.reference}}", "operation": "eq"},
        "judge": {"type": "score_model", "name": "judge", "model": "gpt-4o-2024-08-06", "input": [
            {"role": "user", "content": "Reference: {{item.reference}}\nAnswer: {{sample.output_text}}"}]}},
     "calculate_output": "0.5 * exact + 0.5 * judge"},
]


def tg(r: Rig, *args: str) -> Any:
    return runner.invoke(app, list(args), env=r.cli_env)


def ok_json(r: Rig, *args: str) -> Any:
    result = tg(r, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def replayed_model(r: Rig, bundle: Path) -> tuple[str, str]:
    """Replay the supervised job onto Together and wait for it: (job id, tuned model)."""
    out = ok_json(r, "migrate", "replay", str(bundle), "--to", "together-ai", "--connection", "tgt",
                  "--job", r.jobs["supervised"])
    job_id = next(j for j in out["jobs"] if j["source_job"] == r.jobs["supervised"])["job"]["id"]
    sdk = r.sdk(**{"x-portkey-provider": "together-ai", "x-portkey-virtual-key": "tgt"})
    deadline = time.monotonic() + 30
    while (job := sdk.fine_tuning.jobs.retrieve(job_id)).status != "succeeded":
        assert job.status not in ("failed", "cancelled") and time.monotonic() < deadline, job.status
    assert job.fine_tuned_model
    return job_id, job.fine_tuned_model


@pytest.fixture
def migrated(rig: Rig, tmp_path: Path) -> dict[str, Any]:  # noqa: F811
    bundle = tmp_path / "bundle"
    assert ok_json(rig, "migrate", "export", str(bundle), "--from", "openai", "--connection", "src")["complete"]
    recorded = ok_json(rig, "migrate", "record", "--model", rig.tuned(), "--bundle", str(bundle),
                       "--connection", "src")
    assert recorded["recorded"] == 4 and recorded["valid"] is True
    new_job, new_model = replayed_model(rig, bundle)
    return {"bundle": bundle, "answers": recorded["out"], "golden": recorded["prompts_from"], "new_job": new_job,
            "new_model": new_model}


def test_eval_compares_recorded_answers_with_the_new_model(rig: Rig, migrated: dict[str, Any],  # noqa: F811
                                                           tmp_path: Path) -> None:
    graders = tmp_path / "graders.json"
    graders.write_text(json.dumps(GRADERS))
    report = tmp_path / "report.html"
    new = migrated["new_model"]
    # The new tuned model was made through tunegate: the registry knows its provider and connection.
    doc = ok_json(rig, "eval", "--answers", migrated["answers"], "--model", new, "--data", migrated["golden"], "--graders", str(graders), "--judge", JUDGE,
                  "--judge-connection", "src", "--html", str(report), "--concurrency", "3")
    assert [(m["label"], m["model"], m["source"]) for m in doc["models"]] == [
        ("A", rig.tuned(), "recorded"), ("B", new, "gateway")]
    a, b = (doc["summary"][x]["graders"] for x in "AB")
    # The old model said the reference every time; the new one is right on "Echo 0" and "Echo 2" only.
    assert a["exact"]["mean"] == 1.0 and b["exact"]["mean"] == 0.5 and b["exact"]["passed"] == 2
    assert a["fuzzy"]["mean"] == 1.0 and 0.5 < b["fuzzy"]["mean"] < 1.0 and b["fuzzy"]["pass_rate"] == 0.5
    assert a["rouge"]["mean"] == 1.0 and 0.5 < b["rouge"]["mean"] < 1.0
    assert a["judge"]["mean"] == 1.0 and b["judge"]["mean"] == pytest.approx((1 + 1 + 0.25 + 0.25) / 4)
    assert a["verdict"]["pass_rate"] == 1.0 and b["verdict"]["passed"] == 2
    assert a["overall"]["mean"] == 1.0 and b["overall"]["mean"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.625)
    assert all(s["errors"] == 0 for s in (*a.values(), *b.values()))
    item = next(i for i in doc["items"] if i["reference"] == "1")
    assert item["samples"]["A"]["output_text"] == "1" and item["samples"]["B"]["output_text"] == "The answer is 1"
    assert item["samples"]["B"]["scores"]["verdict"] == {"score": 0.0, "passed": False, "detail": "incorrect"}
    assert item["samples"]["B"]["finish_reason"] == "stop" and item["samples"]["B"]["usage"]

    # The judge (the grader's own model replaced by --judge) got the templates filled in, over the wire.
    judged = ["\n".join(str(m["content"]) for m in msgs) for msgs in rig.old.judged]
    assert len(judged) == 2 * 4 * 3  # two models x four items x (judge, verdict, overall's judge)
    assert any("Prompt: Echo 1\nReference: 1\nAnswer: The answer is 1" in j for j in judged)
    # The recorded side is never asked again: only the judge's model reached the OpenAI stand-in's chat.
    assert {json.loads(q.body)["model"] for q in rig.source.requests
            if q.path.endswith("/chat/completions")} - {rig.tuned()} == {JUDGE}

    stored = Path(doc["stored"])
    assert stored.parent == rig.gateway.settings.data_dir / "evals" and json.loads(stored.read_text())["id"] == doc["id"]
    page = report.read_text()
    assert doc["id"] in page and "4 item(s)" in page and "The answer is 1" in page and "<script" not in page and "http" not in page.lower()

    # The dashboard: the run beside the OpenAI job (model A) and beside the replayed Together job (model B).
    for job_id, label in ((rig.jobs["supervised"], "A"), (migrated["new_job"], "B")):
        html = requests.get(f"{rig.gateway.url}/ui/jobs/{job_id}", headers={"x-portkey-api-key": rig.key},
                            timeout=30)
        assert html.status_code == 200
        section = html.text.split('id="evals"', 1)[1].split("</section>", 1)[0]
        assert f'id="{doc["id"]}"' in section
        heads = {h.split(":", 1)[0]: h for h in section.split("<th>")[2:]}  # "A: <code>model</code>…</th>"
        assert "← this job" in heads[label] and all("← this job" not in h for k, h in heads.items() if k != label)
        assert "0.500" in section and "1.000" in section and "Echo" not in section  # scores, never prompts
    other = requests.get(f"{rig.gateway.url}/ui/jobs/{rig.jobs['dpo']}", headers={"x-portkey-api-key": rig.key},
                         timeout=30).text
    assert doc["id"] not in other and "No eval run names" in other

    # The terminal table says the same.
    human = tg(rig, "eval", "--answers", migrated["answers"], "--model", new, "--model-connection", f"{new}=tgt",
               "--data", migrated["golden"], "--graders", str(graders), "--judge", JUDGE, "--judge-connection", "src",
               "--no-store")
    assert human.exit_code == 0, human.output
    assert "Δ B−A" in human.stdout and "-0.500" in human.stdout and "stored:" not in human.stdout


def test_eval_of_two_live_models_with_default_graders(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({"item": {"input": f"Echo {i}", "reference": str(i)}}) + "\n"
                              for i in range(3)) + "no json\n")
    tuned = rig.tuned()
    doc = ok_json(rig, "eval", "--model", tuned, "--model", "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
                  "--model-connection", "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo=tgt", "--connection", "src",
                  "--data", str(golden), "--judge", JUDGE, "--no-store", "--seed", "4")
    assert doc["data"]["items"] == 3 and doc["data"]["skipped"] == ["line 4: not JSON"]
    assert [g["name"] for g in doc["graders"]] == ["exact", "fuzzy", "judge"]
    a, b = (doc["summary"][x]["graders"] for x in "AB")
    assert a["exact"]["mean"] == 1.0 and b["exact"]["mean"] == pytest.approx(2 / 3, abs=1e-6)
    assert a["judge"]["mean"] == 1.0 and "stored" not in doc
    sent = [json.loads(q.body) for q in rig.source.requests if q.path.endswith("/chat/completions")]
    assert {(s["model"], s["temperature"], s.get("seed")) for s in sent if s["model"] == tuned} == {(tuned, 0.0, 4)}


def test_eval_refuses_what_it_cannot_grade_before_calling_any_model(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    golden = tmp_path / "g.jsonl"
    golden.write_text(json.dumps({"messages": [{"role": "user", "content": "Echo 1"},
                                               {"role": "assistant", "content": "1"}]}) + "\n")
    for spec, words in (({"type": "text_similarity", "name": "c", "input": "{{sample.output_text}}",
                          "reference": "x", "evaluation_metric": "cosine"}, "compares embeddings"),
                        ({"type": "python", "name": "p", "source": "x"}, "python graders"),
                        ({"type": "multi", "name": "m", "graders": {"a": GRADERS[0]},
                          "calculate_output": "__import__('os')"}, "may call only")):
        graders = tmp_path / "g.json"
        graders.write_text(json.dumps(spec))
        result = tg(rig, "eval", "--model", rig.tuned(), "--connection", "src", "--data", str(golden),
                    "--graders", str(graders), "--no-store")
        assert result.exit_code == 1 and words in result.output, result.output
    assert not [q for q in rig.source.requests if q.path.endswith("/chat/completions")]
    missing = tg(rig, "eval", "--data", str(golden))
    assert missing.exit_code == 1 and "--answers FILE" in missing.output


def test_a_model_that_fails_is_counted_not_scored(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    golden = tmp_path / "g.jsonl"
    golden.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Echo {i}"},
                                                       {"role": "assistant", "content": str(i)}]}) + "\n"
                              for i in range(2)))
    doc = ok_json(rig, "eval", "--model", rig.tuned(), "--model", "ft:gpt-4o-mini:gone:x:1", "--connection", "src",
                  "--data", str(golden), "--no-store")
    b = doc["summary"]["B"]
    assert b["answers"] == {"n": 2, "failed": 2} and b["graders"]["exact"] == {
        "type": "string_check", "n": 0, "errors": 2, "mean": None, "passed": None, "pass_rate": None}
    # A model the registry does not know: the provider's 404 reads as the refusal of another key's model.
    assert "No such model: 'ft:gpt-4o-mini:gone:x:1'" in doc["items"][0]["samples"]["B"]["error"]
