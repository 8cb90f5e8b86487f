"""OpenAI-shaped graders, run by tunegate: the JSON a team already has for OpenAI's evals and
reinforcement fine-tuning carries over unchanged.

Shapes (fields, enums, defaults) are the installed SDK's, openai-python 2.x / 3.57.0
``src/openai/types/graders/``: ``string_check_grader.py`` (operation eq | ne | like | ilike),
``text_similarity_grader.py`` (evaluation_metric cosine | fuzzy_match | bleu | gleu | meteor |
rouge_1..rouge_5 | rouge_l), ``score_model_grader.py`` (input messages, model, range default [0, 1],
sampling_params), ``label_model_grader.py`` (labels, passing_labels) and ``multi_grader.py``
(calculate_output over named graders). Templating (``{{ item.x }}``, ``{{ sample.output_text }}``,
``sample.output_json``, JSON-path-like ``a.b[0]``) follows OpenAI's graders guide
(developers.openai.com/api/docs/guides/graders).

What differs, on purpose and said where it shows:

- ``python`` graders run arbitrary code: refused at load, by name.
- ``cosine`` needs an embeddings model, which tunegate's API does not serve: refused at load.
- ``meteor`` needs NLTK's WordNet data; without it, refused at load with the command that installs it.
- Model graders ask the judge for a JSON object in words (``{"result": ...}``) instead of OpenAI's
  structured outputs, since not every backend has them; an answer that does not parse, or a score
  outside ``range``, is an error for that item — never a made-up score.
- The exact tokenisation and library behind OpenAI's similarity metrics is not published: tunegate
  uses rapidfuzz (fuzzy_match), sacrebleu (bleu), NLTK (gleu, meteor) and rouge-score (rouge_*);
  scores are comparable between models graded here, not necessarily to numbers OpenAI reported.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]
# (model, messages, extra chat parameters) -> the judge's answer text; raises JudgeError on failure
Judge = Callable[[str, list[JSON], JSON], str]

SIMILARITY_METRICS = ("cosine", "fuzzy_match", "bleu", "gleu", "meteor",
                      "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")
STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
_TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PATH_PART = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


class GraderError(ValueError):
    """A grader definition that cannot run here (named, with the reason)."""


class JudgeError(Exception):
    """The judge model could not be asked (the gateway's words)."""


@dataclass
class Grade:
    score: float | None
    passed: bool | None = None
    error: str | None = None
    detail: str | None = None  # e.g. the label a judge chose

    def to_dict(self) -> JSON:
        return {k: v for k, v in {"score": self.score, "passed": self.passed, "error": self.error,
                                  "detail": self.detail}.items() if v is not None or k == "score"}


# ---- templating ----------------------------------------------------------------------------------


def _lookup(namespaces: JSON, path: str) -> Any:
    space, _, rest = path.partition(".")
    if space not in ("item", "sample"):
        raise GraderError(f"template '{{{{{path}}}}}': the namespace must be 'item' or 'sample'")
    value: Any = namespaces.get(space, {})
    pos = 0
    while pos < len(rest):
        m = _PATH_PART.match(rest, pos)
        if m is None:
            raise GraderError(f"template '{{{{{path}}}}}' is not a path like item.a.b[0]")
        pos = m.end()
        if m.group(1) is not None:
            if not isinstance(value, dict) or m.group(1) not in value:
                raise KeyError(path)
            value = value[m.group(1)]
        else:
            index = int(m.group(2))
            if not isinstance(value, list) or index >= len(value):
                raise KeyError(path)
            value = value[index]
    return value


def check_template(text: str) -> None:
    """Refuse, at load, a template naming a namespace other than item / sample or a malformed path."""
    for m in _TEMPLATE.finditer(text):
        try:
            _lookup({}, m.group(1))
        except KeyError:
            pass


def render(text: str, namespaces: JSON) -> str:
    """``{{ item.x }}`` → the value (a string as it is, anything else as JSON). A variable the item
    or sample does not have is an error for that item, not an empty string."""
    def one(m: re.Match[str]) -> str:
        try:
            value = _lookup(namespaces, m.group(1))
        except KeyError:
            raise GraderError(f"'{{{{{m.group(1)}}}}}' is not in this {m.group(1).split('.')[0]}") from None
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _TEMPLATE.sub(one, text)


# ---- the graders ---------------------------------------------------------------------------------


@dataclass
class Grader:
    name: str
    spec: JSON
    pass_threshold: float | None = None

    def grade(self, namespaces: JSON, judge: Judge | None) -> Grade:
        try:
            grade = self._grade(namespaces, judge)
        except (GraderError, JudgeError) as exc:
            return Grade(None, error=str(exc))
        if grade.passed is None and self.pass_threshold is not None and grade.score is not None:
            grade.passed = grade.score >= self.pass_threshold
        return grade

    def _grade(self, namespaces: JSON, judge: Judge | None) -> Grade:
        raise NotImplementedError

    @property
    def uses_judge(self) -> bool:
        return False


@dataclass
class StringCheck(Grader):
    def _grade(self, namespaces: JSON, judge: Judge | None) -> Grade:
        got, ref = render(self.spec["input"], namespaces), render(self.spec["reference"], namespaces)
        op = self.spec["operation"]
        # OpenAI's graders guide: like = the input contains the reference; ilike = the same, ignoring case.
        ok = {"eq": got == ref, "ne": got != ref, "like": ref in got, "ilike": ref.lower() in got.lower()}[op]
        return Grade(1.0 if ok else 0.0, passed=ok)


def _metric(metric: str) -> Callable[[str, str], float]:
    """The function for a text_similarity metric, or a GraderError saying why it cannot run here."""
    if metric not in SIMILARITY_METRICS:
        raise GraderError(f"evaluation_metric must be one of {', '.join(SIMILARITY_METRICS)}")
    missing = "needs the optional libraries: pip install 'tunegate[eval]'"
    try:
        if metric == "fuzzy_match":
            from rapidfuzz import fuzz

            return lambda got, ref: float(fuzz.ratio(got, ref)) / 100.0
        if metric == "bleu":
            import sacrebleu

            return lambda got, ref: float(sacrebleu.sentence_bleu(got, [ref]).score) / 100.0
        if metric == "gleu":
            from nltk.translate.gleu_score import sentence_gleu

            return lambda got, ref: float(sentence_gleu([ref.split()], got.split()))
        if metric == "meteor":
            return _meteor()
        if metric.startswith("rouge_"):
            from rouge_score import rouge_scorer

            kind = "rougeL" if metric == "rouge_l" else "rouge" + metric.split("_")[1]
            scorer = rouge_scorer.RougeScorer([kind])
            return lambda got, ref: float(scorer.score(ref, got)[kind].fmeasure)
    except ImportError:
        raise GraderError(f"evaluation_metric '{metric}' {missing}") from None
    raise GraderError("evaluation_metric 'cosine' compares embeddings, and tunegate serves no embeddings "
                      "model: use another metric (fuzzy_match, bleu, rouge_l, ...) or a score_model grader")


def _meteor() -> Callable[[str, str], float]:
    import nltk
    from nltk.translate.meteor_score import meteor_score

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet.zip")
        except LookupError:
            raise GraderError("evaluation_metric 'meteor' needs NLTK's WordNet data, which is not installed: "
                              "python -m nltk.downloader wordnet") from None
    return lambda got, ref: float(meteor_score([ref.split()], got.split()))


@dataclass
class TextSimilarity(Grader):
    fn: Callable[[str, str], float] = field(default=lambda a, b: 0.0, repr=False)

    def _grade(self, namespaces: JSON, judge: Judge | None) -> Grade:
        got, ref = render(self.spec["input"], namespaces), render(self.spec["reference"], namespaces)
        # Rounded and kept in [0, 1]: sacrebleu's 100.00000000000004 is a perfect match, not more.
        return Grade(round(min(1.0, max(0.0, self.fn(got, ref))), 6))


def _content(content: Any, namespaces: JSON) -> Any:
    """A grader input's content (a string, an input_text / output_text / input_image item, or a list of
    them: ``score_model_grader.InputContent``) as chat-completions content, templated."""
    if isinstance(content, str):
        return render(content, namespaces)
    if isinstance(content, dict):
        kind = content.get("type")
        if kind in ("input_text", "output_text") and isinstance(content.get("text"), str):
            return render(content["text"], namespaces)
        if kind == "input_image" and isinstance(content.get("image_url"), str):
            image: JSON = {"url": render(content["image_url"], namespaces)}
            if content.get("detail"):
                image["detail"] = content["detail"]
            return [{"type": "image_url", "image_url": image}]
        raise GraderError(f"input content of type {kind!r} is not supported here (text and images are)")
    if isinstance(content, list):
        parts: list[JSON] = []
        for piece in content:
            got = _content(piece, namespaces)
            parts.extend(got if isinstance(got, list) else [{"type": "text", "text": got}])
        return parts
    raise GraderError("each input message needs 'content' (a string or content items)")


def _judge_messages(spec: JSON, namespaces: JSON, instruction: str) -> list[JSON]:
    messages = [{"role": m["role"], "content": _content(m.get("content"), namespaces)} for m in spec["input"]]
    return messages + [{"role": "system", "content": instruction}]


def _sampling(spec: JSON) -> JSON:
    """score_model_grader.SamplingParams → chat parameters (max_completions_tokens is OpenAI's spelling)."""
    params = spec.get("sampling_params") or {}
    out: JSON = {}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                         ("max_tokens", "max_completions_tokens"), ("reasoning_effort", "reasoning_effort")):
        if params.get(theirs) is not None:
            out[ours] = params[theirs]
    out.setdefault("temperature", 0)
    return out


def _json_answer(text: str) -> Any:
    """The judge's JSON object, also when wrapped in a code fence or a sentence; None if there is none."""
    stripped = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", stripped, re.S)
    candidates = [fenced.group(1)] if fenced else []
    start, end = stripped.find("{"), stripped.rfind("}")
    if 0 <= start < end:
        candidates.append(stripped[start:end + 1])
    candidates.append(stripped)
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


@dataclass
class ScoreModel(Grader):
    model: str = ""

    @property
    def uses_judge(self) -> bool:
        return True

    def _grade(self, namespaces: JSON, judge: Judge | None) -> Grade:
        assert judge is not None
        low, high = self.spec.get("range") or [0, 1]
        instruction = ("Grade the conversation above. Answer with only a JSON object of the form "
                       '{"steps": [{"description": "...", "conclusion": "..."}], "result": <number>} where '
                       f"result is a number from {low:g} to {high:g}.")
        text = judge(self.model, _judge_messages(self.spec, namespaces, instruction), _sampling(self.spec))
        parsed = _json_answer(text)
        result = parsed.get("result") if isinstance(parsed, dict) else parsed
        if isinstance(result, bool) or not isinstance(result, int | float):
            raise GraderError(f"the judge {self.model} did not answer with a JSON 'result' number: "
                              f"{text.strip()[:120]!r}")
        if not low <= result <= high:
            raise GraderError(f"the judge's result {result} is outside the range [{low:g}, {high:g}]")
        return Grade(float(result))


@dataclass
class LabelModel(Grader):
    model: str = ""

    @property
    def uses_judge(self) -> bool:
        return True

    def _grade(self, namespaces: JSON, judge: Judge | None) -> Grade:
        assert judge is not None
        labels = self.spec["labels"]
        instruction = ("Label the conversation above. Answer with only a JSON object of the form "
                       '{"result": "<label>"} where the label is one of: ' + json.dumps(labels) + ".")
        text = judge(self.model, _judge_messages(self.spec, namespaces, instruction), {"temperature": 0})
        parsed = _json_answer(text)
        label = parsed.get("result") if isinstance(parsed, dict) else parsed if isinstance(parsed, str) else None
        if label is None and text.strip() in labels:
            label = text.strip()
        if label not in labels:
            raise GraderError(f"the judge {self.model} answered no label of {labels}: {text.strip()[:120]!r}")
        ok = label in self.spec["passing_labels"]
        return Grade(1.0 if ok else 0.0, passed=ok, detail=str(label))


# ---- calculate_output: a small arithmetic language, parsed with ast and walked (never eval'd) -------

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow, ast.BitXor: operator.pow,  # '^' is power in OpenAI's formulas
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
    "sqrt": math.sqrt, "log": math.log,
}
MAX_FORMULA = 1000


def parse_formula(text: str, names: set[str]) -> ast.expr:
    """Check ``calculate_output`` at load: numbers, the graders' names, + - * / ^ (or **), parentheses
    and min, max, abs, floor, ceil, exp, sqrt, log. Anything else is refused by name."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_FORMULA:
        raise GraderError(f"calculate_output must be a formula of at most {MAX_FORMULA} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise GraderError(f"calculate_output {text!r} is not a formula") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                raise GraderError(f"calculate_output may call only {', '.join(_FUNCTIONS)}")
        elif isinstance(node, ast.Name):
            if node.id not in names and node.id not in _FUNCTIONS:
                raise GraderError(f"calculate_output names {node.id!r}, which is none of the graders "
                                  f"({', '.join(sorted(names))})")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise GraderError("calculate_output may hold only numbers and grader names")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise GraderError(f"calculate_output: operator {type(node.op).__name__} is not allowed")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd):
                raise GraderError("calculate_output: only + and - in front of a number")
        elif not isinstance(node, ast.operator | ast.unaryop | ast.Load):
            raise GraderError(f"calculate_output: {type(node).__name__} is not allowed")
    return tree


def evaluate(node: ast.expr, values: dict[str, float]) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        inner = evaluate(node.operand, values)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        left, right = evaluate(node.left, values), evaluate(node.right, values)
        if isinstance(node.op, ast.Pow | ast.BitXor) and abs(right) > 64:
            raise GraderError("calculate_output: exponent too large")
        try:
            return float(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise GraderError("calculate_output divided by zero") from None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        try:
            return float(_FUNCTIONS[node.func.id](*(evaluate(a, values) for a in node.args)))
        except (ValueError, TypeError) as exc:
            raise GraderError(f"calculate_output: {node.func.id}(): {exc}") from None
    raise GraderError("calculate_output: not a formula")


@dataclass
class Multi(Grader):
    graders: dict[str, Grader] = field(default_factory=dict)
    formula: ast.expr | None = None

    @property
    def uses_judge(self) -> bool:
        return any(g.uses_judge for g in self.graders.values())

    def _grade(self, namespaces: JSON, judge: Judge | None) -> Grade:
        values: dict[str, float] = {}
        for name, sub in self.graders.items():
            got = sub.grade(namespaces, judge)
            if got.score is None:
                raise GraderError(f"{name}: {got.error}")
            values[name] = got.score
        assert self.formula is not None
        return Grade(round(evaluate(self.formula, values), 6))


# ---- loading -------------------------------------------------------------------------------------


def _need(spec: JSON, where: str, *names: str) -> None:
    missing = [n for n in names if n not in spec]
    if missing:
        raise GraderError(f"grader {where}: missing {', '.join(repr(m) for m in missing)}")


def _strings(spec: JSON, where: str, *names: str) -> None:
    for n in names:
        if not isinstance(spec.get(n), str):
            raise GraderError(f"grader {where}: '{n}' must be a string")
        check_template(spec[n])


def _model_spec(spec: JSON, where: str, judge_override: str | None) -> str:
    _need(spec, where, "input", "model")
    if not isinstance(spec["input"], list) or not spec["input"]:
        raise GraderError(f"grader {where}: 'input' must be a non-empty list of messages")
    for m in spec["input"]:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system", "developer"):
            raise GraderError(f"grader {where}: each input message needs a role of user, assistant, system, "
                              "developer")
        if isinstance(m.get("content"), str):
            check_template(m["content"])
    return judge_override or str(spec["model"])


def load(spec: Any, judge_override: str | None = None, where: str | None = None) -> Grader:
    """One grader from its OpenAI JSON; ``judge_override`` replaces the model of every model grader."""
    if not isinstance(spec, dict):
        raise GraderError("a grader must be a JSON object")
    kind = spec.get("type")
    name = str(spec.get("name") or where or kind or "grader")
    label = f"'{name}' ({kind})"
    threshold = spec.get("pass_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
        raise GraderError(f"grader {label}: pass_threshold must be a number")
    common: JSON = {"name": name, "spec": spec, "pass_threshold": threshold}
    if kind == "string_check":
        _need(spec, label, "input", "reference", "operation")
        _strings(spec, label, "input", "reference")
        if spec["operation"] not in STRING_OPERATIONS:
            raise GraderError(f"grader {label}: operation must be one of {', '.join(STRING_OPERATIONS)}")
        return StringCheck(**common)
    if kind == "text_similarity":
        _need(spec, label, "input", "reference", "evaluation_metric")
        _strings(spec, label, "input", "reference")
        return TextSimilarity(**common, fn=_metric(str(spec["evaluation_metric"])))
    if kind == "score_model":
        model = _model_spec(spec, label, judge_override)
        rng = spec.get("range")
        if rng is not None and not (isinstance(rng, list) and len(rng) == 2
                                    and all(isinstance(x, int | float) and not isinstance(x, bool) for x in rng)
                                    and rng[0] < rng[1]):
            raise GraderError(f"grader {label}: range must be two increasing numbers")
        return ScoreModel(**common, model=model)
    if kind == "label_model":
        model = _model_spec(spec, label, judge_override)
        labels, passing = spec.get("labels"), spec.get("passing_labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise GraderError(f"grader {label}: 'labels' must be a non-empty list of strings")
        if not isinstance(passing, list) or not set(passing) <= set(labels):
            raise GraderError(f"grader {label}: 'passing_labels' must be a subset of 'labels'")
        return LabelModel(**common, model=model)
    if kind == "multi":
        return _multi(spec, common, label, judge_override)
    if kind == "python":
        raise GraderError(f"grader {label}: python graders run arbitrary code, which tunegate does not do; "
                          "express it as string_check / text_similarity / a model grader, or score it yourself")
    raise GraderError(f"grader {label}: unknown type; known: string_check, text_similarity, score_model, "
                      "label_model, multi")


def _multi(spec: JSON, common: JSON, label: str, judge_override: str | None) -> Multi:
    _need(spec, label, "graders", "calculate_output")
    raw = spec["graders"]
    # The API reference types `graders` as one grader; OpenAI's guide and cookbook name several, as an
    # object keyed by the names the formula uses (or a list of graders, each by its own name).
    if isinstance(raw, dict) and "type" in raw and isinstance(raw.get("type"), str):
        items = [(str(raw.get("name") or raw["type"]), raw)]
    elif isinstance(raw, dict):
        items = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list):
        items = [(str(g.get("name") if isinstance(g, dict) else "") or f"grader_{i}", g) for i, g in enumerate(raw)]
    else:
        raise GraderError(f"grader {label}: 'graders' must be a grader, a list of graders or an object of them")
    subs: dict[str, Grader] = {}
    for key, sub in items:
        if isinstance(sub, dict) and sub.get("type") == "multi":
            raise GraderError(f"grader {label}: a multi grader inside a multi grader is not supported")
        subs[key] = load(sub, judge_override, where=key)
    formula = parse_formula(spec["calculate_output"], set(subs))
    return Multi(**common, graders=subs, formula=formula)


def load_file_data(data: Any, judge_override: str | None = None) -> list[Grader]:
    """A graders file: one grader, a list of them, ``{"graders": [...]}`` or an eval's
    ``{"testing_criteria": [...]}``. Names must be unique (they are the report's rows)."""
    if isinstance(data, dict) and isinstance(data.get("testing_criteria"), list):
        data = data["testing_criteria"]
    elif isinstance(data, dict) and isinstance(data.get("graders"), list) and "type" not in data:
        data = data["graders"]
    specs = data if isinstance(data, list) else [data]
    if not specs:
        raise GraderError("the graders file holds no grader")
    graders = [load(s, judge_override) for s in specs]
    seen: set[str] = set()
    for g in graders:
        if g.name in seen:
            raise GraderError(f"two graders are named {g.name!r}: names must be unique")
        seen.add(g.name)
    return graders


def defaults(judge: str | None) -> list[Grader]:
    """Without --graders: exact match and fuzzy similarity against the reference answer, and a judge's
    0–1 score when --judge names a model."""
    specs: list[JSON] = [
        {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.reference}}", "operation": "eq"},
        {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
         "reference": "{{item.reference}}", "evaluation_metric": "fuzzy_match"},
    ]
    if judge:
        specs.append({"type": "score_model", "name": "judge", "model": judge, "range": [0, 1], "input": [
            {"role": "system", "content": "You compare an answer with a reference answer to the same prompt. "
                                          "1 means as good as the reference, 0 means wrong or useless."},
            {"role": "user", "content": "Prompt: {{item.prompt}}\nReference: {{item.reference}}\n"
                                        "Answer: {{sample.output_text}}"}]})
    return [load(s) for s in specs]
