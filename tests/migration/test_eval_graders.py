"""The graders on their own: OpenAI's JSON shapes accepted as they are, templating, each operation and
metric, the formula language (parsed, never eval'd), and the clear refusals (python, cosine, meteor
without WordNet, a bad formula) instead of a made-up number."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tunegate.migration import graders as gr

SAMPLE = {"item": {"reference": "Paris", "tags": ["geo", {"lang": "fr"}], "n": 3},
          "sample": {"output_text": "paris, France"}}


def grade(spec: dict[str, Any], ns: dict[str, Any] = SAMPLE, judge: Any = None) -> gr.Grade:
    return gr.load(spec).grade(ns, judge)


def check(op: str, reference: str = "{{item.reference}}") -> gr.Grade:
    return grade({"type": "string_check", "name": op, "input": "{{ sample.output_text }}", "reference": reference,
                  "operation": op})


def test_string_check_operations() -> None:
    assert check("eq").score == 0.0 and check("ne").score == 1.0
    assert check("like").score == 0.0 and check("ilike").score == 1.0  # contains, with / without case
    assert check("like", "France").score == 1.0 and check("eq", "paris, France").passed is True


def test_templates_follow_json_paths_and_refuse_what_is_not_there() -> None:
    assert gr.render("{{item.tags[1].lang}}-{{ item.n }}-{{item.tags}}", SAMPLE) == 'fr-3-["geo", {"lang": "fr"}]'
    missing = check("eq", "{{item.nothing}}")
    assert missing.score is None and "'{{item.nothing}}' is not in this item" in (missing.error or "")
    with pytest.raises(gr.GraderError, match="namespace must be 'item' or 'sample'"):
        gr.load({"type": "string_check", "name": "x", "input": "{{ env.HOME }}", "reference": "", "operation": "eq"})


@pytest.mark.parametrize(("metric", "same", "different"), [
    ("fuzzy_match", 1.0, (0.3, 0.8)),
    ("bleu", 1.0, (0.0, 0.5)),
    ("gleu", 1.0, (0.0, 0.6)),
    ("rouge_1", 1.0, (0.5, 0.95)),
    ("rouge_l", 1.0, (0.5, 0.95)),
    ("rouge_5", 1.0, (0.0, 0.01)),
])
def test_text_similarity_metrics(metric: str, same: float, different: tuple[float, float]) -> None:
    def score(text: str) -> float | None:
        return grade({"type": "text_similarity", "name": metric, "input": "{{sample.output_text}}",
                      "reference": "the cat sat on the mat today", "evaluation_metric": metric},
                     {"item": {}, "sample": {"output_text": text}}).score

    assert score("the cat sat on the mat today") == same
    low, high = different
    got = score("the cat sat on a mat")
    assert got is not None and low <= got <= high, got


def test_metrics_that_cannot_run_here_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"type": "text_similarity", "name": "s", "input": "a", "reference": "b"}
    with pytest.raises(gr.GraderError, match="'cosine' compares embeddings"):
        gr.load({**base, "evaluation_metric": "cosine"})
    with pytest.raises(gr.GraderError, match="must be one of"):
        gr.load({**base, "evaluation_metric": "rouge_9"})
    import nltk

    def no_data(name: str) -> None:
        raise LookupError(name)

    monkeypatch.setattr(nltk.data, "find", no_data)
    with pytest.raises(gr.GraderError, match="nltk.downloader wordnet"):
        gr.load({**base, "evaluation_metric": "meteor"})
    with pytest.raises(gr.GraderError, match="python graders run arbitrary code"):
        gr.load({"type": "python", "name": "p", "source": "def grade(s, i): return 1"})


def judge_saying(text: str, seen: list[Any]) -> gr.Judge:
    def judge(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
        seen.append((model, messages, params))
        return text

    return judge


SCORE = {"type": "score_model", "name": "judge", "model": "gpt-4o-2024-08-06", "range": [0, 10],
         "sampling_params": {"temperature": 0.2, "max_completions_tokens": 50, "seed": 3},
         "input": [{"role": "system", "content": "Grade it."},
                   {"role": "user", "content": [{"type": "input_text", "text": "Answer: {{sample.output_text}}"},
                                                {"type": "input_image", "image_url": "https://x/{{item.n}}.png"}]}]}


def test_score_model_renders_its_input_and_reads_the_judges_json() -> None:
    seen: list[Any] = []
    got = gr.load(SCORE, judge_override="judge-model").grade(SAMPLE, judge_saying('Sure: {"result": 7.5}', seen))
    assert got.score == 7.5 and got.error is None
    model, messages, params = seen[0]
    assert model == "judge-model" and params == {"temperature": 0.2, "max_tokens": 50, "seed": 3}
    assert messages[1]["content"] == [{"type": "text", "text": "Answer: paris, France"},
                                      {"type": "image_url", "image_url": {"url": "https://x/3.png"}}]
    assert "from 0 to 10" in messages[-1]["content"] and messages[-1]["role"] == "system"
    # Outside the range, or no number: an error for this item, never a made-up score.
    for answer in ('{"result": 11}', "I would say good", '{"result": "high"}'):
        bad = gr.load(SCORE).grade(SAMPLE, judge_saying(answer, []))
        assert bad.score is None and bad.error


def test_label_model_passes_on_passing_labels() -> None:
    spec = {"type": "label_model", "name": "tone", "model": "m", "labels": ["polite", "rude", "neutral"],
            "passing_labels": ["polite", "neutral"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    assert gr.load(spec).grade(SAMPLE, judge_saying('{"result": "neutral"}', [])).to_dict() == {
        "score": 1.0, "passed": True, "detail": "neutral"}
    assert gr.load(spec).grade(SAMPLE, judge_saying("rude", [])).passed is False
    assert "no label" in (gr.load(spec).grade(SAMPLE, judge_saying('{"result": "angry"}', [])).error or "")
    with pytest.raises(gr.GraderError, match="subset"):
        gr.load({**spec, "passing_labels": ["kind"]})


def multi(graders: Any, formula: str) -> dict[str, Any]:
    return {"type": "multi", "name": "m", "graders": graders, "calculate_output": formula}


EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "paris, France",
         "operation": "eq"}
FUZZY = {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
         "reference": "{{item.reference}}", "evaluation_metric": "fuzzy_match"}


def test_multi_combines_named_graders_in_each_shape_openai_uses() -> None:
    keyed = grade(multi({"a": EXACT, "b": FUZZY}, "0.5 * a + 0.5 * b"))
    fuzzy = grade(FUZZY).score
    assert fuzzy is not None and keyed.score == pytest.approx(0.5 + 0.5 * fuzzy, abs=1e-6)
    assert grade(multi([EXACT, FUZZY], "min(exact, fuzzy) ^ 2")).score == pytest.approx(fuzzy ** 2, abs=1e-6)
    assert grade(multi(EXACT, "(100 - abs(exact * 100 - 40)) / 100")).score == 0.4
    assert grade(multi({"a": EXACT}, "floor(a * 2.5) + ceil(0.2) + sqrt(4) + exp(0) + log(1)")).score == 6.0
    assert "divided by zero" in (grade(multi({"a": EXACT}, "1 / (a - 1)")).error or "")


@pytest.mark.parametrize("formula", [
    "__import__('os').system('true')", "a.__class__", "(lambda: 1)()", "a if a else 1", "[a][0]", "a < 1",
    "open('x')", "'text'", "b + 1", "a ** 2 ** 99", "",
])
def test_formulas_are_parsed_never_evaluated_as_python(formula: str) -> None:
    try:
        g = gr.load(multi({"a": EXACT}, formula))
    except gr.GraderError:
        return
    assert g.grade(SAMPLE, None).score is None  # "a ** 2 ** 99": parsed, refused when run


def test_grader_files_in_the_shapes_teams_have() -> None:
    as_list = gr.load_file_data([EXACT, FUZZY])
    criteria = gr.load_file_data({"testing_criteria": [{**EXACT, "id": "x"}, {**FUZZY, "pass_threshold": 0.9}]})
    assert [g.name for g in as_list] == [g.name for g in criteria] == ["exact", "fuzzy"]
    assert criteria[1].grade(SAMPLE, None).passed is False  # fuzzy < 0.9
    assert [g.name for g in gr.load_file_data({"graders": [EXACT]})] == ["exact"]
    assert [g.name for g in gr.load_file_data(json.loads(json.dumps(EXACT)))] == ["exact"]
    with pytest.raises(gr.GraderError, match="two graders are named 'exact'"):
        gr.load_file_data([EXACT, EXACT])
    with pytest.raises(gr.GraderError, match="missing 'operation'"):
        gr.load_file_data([{k: v for k, v in EXACT.items() if k != "operation"}])
    with pytest.raises(gr.GraderError, match="unknown type"):
        gr.load_file_data([{"type": "regex", "name": "r"}])
