"""Scorers: small functions that judge one recorded case-epoch.

Every scorer reads only a :class:`~evals.model.CaseRun` (answers, tool calls,
delegations, checks, findings, measurements, events, timings, usage), so a
saved run can be re-scored without running the agent again. The one exception
is ``llm_rubric``, which asks a separate grader model; without one it is
skipped with a reason, never passed.

Each scorer has a pydantic model of its parameters. :func:`validate_spec`
checks a spec against it when a suite is loaded, so a misspelt scorer or
parameter fails then, with a message naming both, instead of in the middle of
a run. :func:`score_case` runs a case's scorers and never raises: a scorer
that crashes, or a run that lacks what a scorer needs, becomes a failed
:class:`~evals.model.Score` that says so.

Scope: text scorers and the check scorers look at the final turn by default;
trajectory, finding and measurement scorers look at every turn of the case
(one thread is one trajectory). ``turn: N`` (1-based), ``turn: final`` or
``turn: all`` overrides that. With ``turn: all``, answer and check scorers
must hold for each turn; trajectory scorers see the turns' calls in order.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.checks import code_blocks
from agent.persona import CHECK_IDS
from agent.results import ToolCallRecord, TurnResult
from evals.model import Case, CaseRun, Score, ScorerSpec, TurnRecord

if TYPE_CHECKING:
    from agent.models.base import ChatModel

#: The offline engine's model spec: it calls no paid API, so its cost is $0.
OFFLINE_MODEL = "offline"
NO_GRADER = "no grader model configured (--grader-model)"


class ScorerSpecError(ValueError):
    """A scorer spec names an unknown type or has bad parameters.

    The message names the scorer type and the offending parameter; ``scorer``
    and ``param`` carry them for callers that build their own message.
    """

    def __init__(self, message: str, *, scorer: str = "", param: str = "") -> None:
        super().__init__(message)
        self.scorer = scorer
        self.param = param


class ScoreFailure(Exception):
    """Raised inside a scorer when the run lacks what it needs (e.g. turn 3 of a
    two-turn case): :func:`score_case` turns it into a failed score with this message."""


# --------------------------------------------------------------------------- parameters


class Params(BaseModel):
    """Base of every scorer's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    #: The parameter the YAML shorthand ``- <type>: <value>`` fills (it arrives as ``value``).
    main: ClassVar[str] = "value"


TurnScope = Annotated[int, Field(ge=1)] | Literal["all", "final"] | None


class Scoped(Params):
    """Parameters of scorers that can be pointed at one turn or at all of them."""

    turn: TurnScope = Field(None, description="1-based turn number, 'final' or 'all'")

    @field_validator("turn", mode="before")
    @classmethod
    def _one_scope(cls, value: Any) -> Any:
        """One clear message instead of one per member of the union."""
        if value is None or value in ("all", "final"):
            return value
        if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
            raise ValueError(f"{value!r} is not a turn: give a 1-based turn number, 'final' or 'all'")
        return int(value)


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return pattern


class TextParams(Scoped):
    value: str = Field(min_length=1)


class RegexParams(Scoped):
    value: str = Field(min_length=1)

    @field_validator("value")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        return _compiles(value)


class JsonSchemaParams(Scoped):
    main: ClassVar[str] = "schema"
    json_schema: dict[str, Any] = Field(alias="schema")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import SchemaError, validators

        try:
            validators.validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return schema


class ToolUsedParams(Scoped):
    main: ClassVar[str] = "name"
    name: str = Field(min_length=1)
    min: int = Field(1, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ToolUsedParams:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class ToolNotUsedParams(Scoped):
    main: ClassVar[str] = "name"
    name: str = Field(min_length=1)


class ToolSequenceParams(Scoped):
    main: ClassVar[str] = "sequence"
    sequence: list[str] = Field(min_length=1)
    #: strict: exactly these calls in this order; unordered: the same calls in any
    #: order; subset: these calls in this order, others allowed in between.
    mode: Literal["strict", "unordered", "subset"] = "strict"


def _arg_patterns(value: Any) -> Any:
    """Check every ``re:`` value of an expected-args mapping (recursively) compiles."""
    if isinstance(value, dict):
        for item in value.values():
            _arg_patterns(item)
    elif isinstance(value, str) and value.startswith("re:"):
        _compiles(value[3:])
    return value


class ToolArgsParams(Scoped):
    main: ClassVar[str] = "name"
    name: str = Field(min_length=1)
    args: dict[str, Any] = Field(min_length=1)

    @field_validator("args")
    @classmethod
    def _valid_patterns(cls, args: dict[str, Any]) -> dict[str, Any]:
        return _arg_patterns(args)


class DelegatedParams(Scoped):
    main: ClassVar[str] = "target"
    target: str = Field(min_length=1)


class MaxStepsParams(Scoped):
    main: ClassVar[str] = "max"
    max: int = Field(ge=1)


def _check_name(name: str) -> str:
    if name not in CHECK_IDS:
        raise ValueError(f"unknown check {name!r}; the five checks are: {', '.join(CHECK_IDS)}")
    return name


class ChecksPassParams(Scoped):
    main: ClassVar[str] = "checks"
    checks: list[str] = Field(default_factory=lambda: list(CHECK_IDS), min_length=1)

    @field_validator("checks", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if value is None or value is True or value == "all":  # `- checks_pass: all`
            return list(CHECK_IDS)
        return [value] if isinstance(value, str) else value

    @field_validator("checks")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        return [_check_name(n) for n in names]


class CheckParams(Scoped):
    main: ClassVar[str] = "name"
    name: str
    status: Literal["pass", "fail", "not_applicable"] = "pass"

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _check_name(name)


class FindingParams(Scoped):
    main: ClassVar[str] = "kind"
    kind: str = Field(min_length=1)
    #: Exact severity to require; any severity when omitted.
    severity: Literal["info", "low", "medium", "high", "critical"] | None = None


class MeasurementParams(Scoped):
    main: ClassVar[str] = "name"
    name: str = Field(min_length=1)
    min: float | None = None
    max: float | None = None
    #: Only measurements from this tool (``Measurement.source``).
    source: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> MeasurementParams:
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max:g}) is below min ({self.min:g})")
        return self


class LatencyParams(Params):
    main: ClassVar[str] = "max_ms"
    max_ms: float = Field(gt=0)


class TokensParams(Params):
    main: ClassVar[str] = "max"
    max: int = Field(ge=0)


class Price(BaseModel):
    """A model's price in US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    #: Price of input tokens read from the provider's prompt cache. The recorded input
    #: tokens include those reads, so with this set they are charged here instead of at
    #: the input price; without it they cost the input price.
    cache_read: float | None = Field(None, ge=0)


class CostParams(Params):
    main: ClassVar[str] = "max_usd"
    max_usd: float = Field(ge=0)
    #: Model spec (``anthropic:claude-...``) or bare model name -> price.
    prices: dict[str, Price] = Field(default_factory=dict)


class RubricParams(Params):
    main: ClassVar[str] = "rubric"
    rubric: str = Field(min_length=1)


# --------------------------------------------------------------------------- registry

#: ``fn(params, run) -> Score``
SyncScore = Callable[[Any, CaseRun], Score]
#: ``async fn(params, run, grader) -> Score``
GradedScore = Callable[[Any, CaseRun, "ChatModel | None"], Awaitable[Score]]


@dataclass(frozen=True)
class Scorer:
    """A registered scorer: its parameter model, its default label and its function.

    ``fn`` is ``fn(params, run) -> Score``, or ``async fn(params, run, grader)``
    when ``graded`` (only ``llm_rubric``).
    """

    name: str
    params: type[Params]
    label: Callable[[Any], str]
    fn: SyncScore | GradedScore
    graded: bool = False


#: Scorer type -> scorer. The names are part of the suite format.
SCORERS: dict[str, Scorer] = {}


def _register(name: str, params: type[Params], label: Callable[[Any], str], *,
              graded: bool = False) -> Callable[[Any], Any]:
    def add(fn: Any) -> Any:
        SCORERS[name] = Scorer(name, params, label, fn, graded)
        return fn

    return add


def scorer_names() -> list[str]:
    return sorted(SCORERS)


def _param_error(scorer: str, exc: ValidationError) -> ScorerSpecError:
    problems = []
    first = ""
    for error in exc.errors():
        param = ".".join(str(p) for p in error["loc"]) or "(params)"
        first = first or param
        message = ("unknown parameter" if error["type"] == "extra_forbidden"
                   else error["msg"].removeprefix("Value error, "))
        problems.append(f"param '{param}': {message}")
    return ScorerSpecError(f"scorer '{scorer}': " + "; ".join(problems), scorer=scorer, param=first)


def _resolve(spec: ScorerSpec) -> tuple[Scorer, Params]:
    """The scorer a spec names and its validated parameters."""
    scorer = SCORERS.get(spec.type)
    if scorer is None:
        close = difflib.get_close_matches(spec.type, SCORERS, n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise ScorerSpecError(
            f"unknown scorer type '{spec.type}'; {guess}known: {', '.join(scorer_names())}",
            scorer=spec.type)
    params = dict(spec.params)
    if scorer.params.main != "value" and "value" in params and scorer.params.main not in params:
        params[scorer.params.main] = params.pop("value")  # the YAML shorthand
    try:
        return scorer, scorer.params.model_validate(params)
    except ValidationError as exc:
        raise _param_error(spec.type, exc) from None


def params_of(spec: ScorerSpec) -> Params:
    """The spec's parameters as its scorer reads them: shorthand resolved, defaults filled.

    Raises :class:`ScorerSpecError` like :func:`validate_spec`.
    """
    return _resolve(spec)[1]


def validate_spec(spec: ScorerSpec) -> None:
    """Raise :class:`ScorerSpecError` if ``spec`` names an unknown scorer or has bad params."""
    params_of(spec)


def label_for(spec: ScorerSpec) -> str:
    """The label a report shows: the spec's own, else the type and its main parameters."""
    if spec.label:
        return spec.label
    try:
        scorer, params = _resolve(spec)
    except ScorerSpecError:
        return spec.type
    return scorer.label(params)


# --------------------------------------------------------------------------- helpers


def _verdict(ok: bool, explanation: str) -> Score:
    """A pass/fail score; :func:`score_case` fills in the label and type."""
    return Score(scorer="", type="", value=1.0 if ok else 0.0, passed=ok, explanation=explanation)


def _skipped(reason: str) -> Score:
    return Score(scorer="", type="", value=0.0, passed=None, explanation=reason,
                 skipped_reason=reason)


class _Turn(NamedTuple):
    number: int
    record: TurnRecord
    result: TurnResult


def _turns(run: CaseRun, turn: int | str | None, default: Literal["all", "final"]) -> list[_Turn]:
    """The turns a scorer looks at; a missing turn or result is a :class:`ScoreFailure`."""
    count = len(run.turns)
    if not count:
        raise ScoreFailure("the run recorded no turns")
    wanted = turn or default
    if wanted == "final":
        numbers = [count]
    elif wanted == "all":
        numbers = list(range(1, count + 1))
    elif int(wanted) > count:
        raise ScoreFailure(f"turn {wanted} does not exist: the case ran {count} turn(s)")
    else:
        numbers = [int(wanted)]
    picked = []
    for number in numbers:
        record = run.turns[number - 1]
        if record.result is None:
            raise ScoreFailure(f"turn {number} recorded no result")
        picked.append(_Turn(number, record, record.result))
    return picked


def _where(turn: int | str | None, default: Literal["all", "final"], run: CaseRun, *,
           answers: bool = False) -> str:
    """How an explanation names what a scorer looked at: answers, or whole turns."""
    noun = "answer" if answers else "turn"
    if len(run.turns) == 1:
        return "the answer" if answers else "the run"
    wanted = turn or default
    if wanted == "final":
        return f"the final {noun}"
    if wanted == "all":
        return f"all {len(run.turns)} {noun}s"
    return f"turn {wanted}" + ("'s answer" if answers else "")


def _quote(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return json.dumps(flat if len(flat) <= limit else flat[: limit - 1] + "…", ensure_ascii=False)


def _around(text: str, match: re.Match[str], width: int = 30) -> str:
    """The matched text with a little context, on one line."""
    start, end = match.span()
    before = text[max(0, start - width):start]
    after = text[end:end + width]
    return _quote(f"{'…' if start > width else ''}{before}[{match.group(0)}]{after}", 120)


def _short(value: str, limit: int = 40) -> str:
    flat = " ".join(value.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _scope_suffix(params: Scoped) -> str:
    return f"@turn{params.turn}" if params.turn not in (None, "final") else ""


def _calls(turns: list[_Turn]) -> list[ToolCallRecord]:
    return [call for t in turns for call in t.result.tool_calls]


def _names(calls: list[ToolCallRecord]) -> str:
    return ", ".join(c.name for c in calls) or "none"


# --------------------------------------------------------------------------- text

def _pattern(kind: str, value: str) -> tuple[re.Pattern[str], str]:
    """The compiled search and how explanations name it."""
    if kind == "regex":
        return re.compile(value), f"/{value}/"
    if kind == "icontains":
        return re.compile(re.escape(value), re.IGNORECASE), f"{value!r} (any case)"
    return re.compile(re.escape(value)), repr(value)


def _text_scorer(kind: str, negate: bool) -> SyncScore:
    """contains / icontains / regex, or their not_ forms, over the scoped answers."""

    def score(p: TextParams | RegexParams, run: CaseRun) -> Score:
        pattern, wanted = _pattern(kind, p.value)
        where = _where(p.turn, "final", run, answers=True)
        turns = _turns(run, p.turn, "final")
        hits = [(t, pattern.search(t.result.answer)) for t in turns]
        which = (lambda t: f" in turn {t.number}") if len(turns) > 1 else (lambda t: "")
        if negate:
            found = [(t, m) for t, m in hits if m is not None]
            if not found:
                return _verdict(True, f"{wanted} absent from {where}, as expected")
            t, m = found[0]
            return _verdict(False, f"expected no {wanted} in {where}; found{which(t)}: "
                                   f"{_around(t.result.answer, m)}")
        missing = [t for t, m in hits if m is None]
        if missing:
            t = missing[0]
            return _verdict(False, f"expected {wanted} in {where}; not found{which(t)} (answer of "
                                   f"{len(t.result.answer)} chars starts {_quote(t.result.answer)})")
        t, last = hits[-1]
        assert last is not None  # no scoped answer misses it
        return _verdict(True, f"found {wanted} in {where}: {_around(t.result.answer, last)}")

    return score


def _text_label(name: str) -> Callable[[Any], str]:
    return lambda p: f"{name}:{_short(p.value)}{_scope_suffix(p)}"


def _register_text_scorers() -> None:
    for kind, params in (("contains", TextParams), ("icontains", TextParams), ("regex", RegexParams)):
        _register(kind, params, _text_label(kind))(_text_scorer(kind, negate=False))
        _register(f"not_{kind}", params, _text_label(f"not_{kind}"))(_text_scorer(kind, negate=True))


_register_text_scorers()


def _json_documents(answer: str) -> list[Any]:
    """The JSON values an answer offers: the whole answer, or its fenced json blocks."""
    candidates = [answer.strip()] + [code for lang, code in code_blocks(answer) if lang in ("json", "")]
    documents = []
    for text in candidates:
        try:
            documents.append(json.loads(text))
        except ValueError:
            continue
    return documents


@_register("json_schema", JsonSchemaParams, lambda p: f"json_schema{_scope_suffix(p)}")
def _json_schema(p: JsonSchemaParams, run: CaseRun) -> Score:
    from jsonschema import validators
    from jsonschema.exceptions import best_match

    validator = validators.validator_for(p.json_schema)(p.json_schema)
    where = _where(p.turn, "final", run, answers=True)
    turns = _turns(run, p.turn, "final")
    for t in turns:
        which = f" turn {t.number}:" if len(turns) > 1 else ""
        documents = _json_documents(t.result.answer)
        if not documents:
            return _verdict(False, f"expected JSON in {where};{which} neither the whole answer nor a "
                                   "```json block parses")
        errors = [best_match(validator.iter_errors(doc)) for doc in documents]
        first = errors[0]
        if first is not None and all(e is not None for e in errors):
            path = "/".join(str(part) for part in first.absolute_path) or "(root)"
            return _verdict(False, f"expected JSON valid against the schema in {where};{which} "
                                   f"{len(documents)} JSON document(s), none valid: at {path}: "
                                   f"{first.message}")
    return _verdict(True, f"{where} holds JSON valid against the schema")


# --------------------------------------------------------------------------- trajectory


def _range_text(low: int, high: int | None) -> str:
    if high is None:
        return f">= {low}"
    return f"exactly {low}" if low == high else f"between {low} and {high}"


@_register("tool_used", ToolUsedParams,
           lambda p: f"tool_used:{p.name}>={p.min}" + (f"<={p.max}" if p.max is not None else "")
           + _scope_suffix(p))
def _tool_used(p: ToolUsedParams, run: CaseRun) -> Score:
    calls = _calls(_turns(run, p.turn, "all"))
    mine = [c for c in calls if c.name == p.name]
    failed = sum(not c.ok for c in mine)
    ok = len(mine) >= p.min and (p.max is None or len(mine) <= p.max)
    return _verdict(ok, f"{p.name}: expected {_range_text(p.min, p.max)} call(s) in "
                        f"{_where(p.turn, 'all', run)}, saw {len(mine)}"
                        + (f" ({failed} failed)" if failed else "") + f" (calls: {_names(calls)})")


@_register("tool_not_used", ToolNotUsedParams, lambda p: f"tool_not_used:{p.name}{_scope_suffix(p)}")
def _tool_not_used(p: ToolNotUsedParams, run: CaseRun) -> Score:
    calls = _calls(_turns(run, p.turn, "all"))
    count = sum(c.name == p.name for c in calls)
    return _verdict(count == 0, f"{p.name}: expected no call in {_where(p.turn, 'all', run)}, "
                                f"saw {count} (calls: {_names(calls)})")


def _matched_prefix(expected: list[str], called: list[str]) -> int:
    """How many of ``expected`` appear, in order, as a subsequence of ``called``."""
    matched = 0
    for name in called:
        if matched < len(expected) and name == expected[matched]:
            matched += 1
    return matched


@_register("tool_sequence", ToolSequenceParams,
           lambda p: f"tool_sequence:{p.mode}:{'>'.join(p.sequence)}{_scope_suffix(p)}")
def _tool_sequence(p: ToolSequenceParams, run: CaseRun) -> Score:
    called = [c.name for c in _calls(_turns(run, p.turn, "all"))]
    seen = f"saw [{', '.join(called)}]"
    want = f"expected {p.mode} sequence [{', '.join(p.sequence)}]"
    if p.mode == "strict":
        return _verdict(called == p.sequence, f"{want}, {seen}")
    if p.mode == "unordered":
        missing = Counter(p.sequence) - Counter(called)
        extra = Counter(called) - Counter(p.sequence)
        detail = "; ".join(part for part in (
            "missing: " + ", ".join(missing.elements()) if missing else "",
            "extra: " + ", ".join(extra.elements()) if extra else "") if part)
        return _verdict(not missing and not extra, f"{want}, {seen}" + (f" ({detail})" if detail else ""))
    matched = _matched_prefix(p.sequence, called)
    if matched == len(p.sequence):
        return _verdict(True, f"{want}, {seen}")
    return _verdict(False, f"{want}, {seen} (found [{', '.join(p.sequence[:matched])}] in order, "
                           f"then no {p.sequence[matched]})")


def _arg_mismatch(expected: dict[str, Any], actual: Any, path: str = "") -> str | None:
    """Why ``actual`` does not contain ``expected`` (recursively), or None when it does."""
    if not isinstance(actual, dict):
        return f"{path or 'args'} is {type(actual).__name__}, not a mapping"
    for key, want in expected.items():
        where = f"{path}.{key}" if path else key
        if key not in actual:
            return f"{where} missing"
        got = actual[key]
        if isinstance(want, dict):
            problem = _arg_mismatch(want, got, where)
            if problem:
                return problem
        elif isinstance(want, str) and want.startswith("re:"):
            text = got if isinstance(got, str) else json.dumps(got)
            if re.search(want[3:], text) is None:
                return f"{where}={got!r} does not match /{want[3:]}/"
        elif got != want or isinstance(got, bool) != isinstance(want, bool):
            return f"{where}={got!r}, expected {want!r}"
    return None


@_register("tool_args_match", ToolArgsParams,
           lambda p: f"tool_args_match:{p.name}({','.join(p.args)}){_scope_suffix(p)}")
def _tool_args_match(p: ToolArgsParams, run: CaseRun) -> Score:
    calls = _calls(_turns(run, p.turn, "all"))
    mine = [c for c in calls if c.name == p.name]
    if not mine:
        return _verdict(False, f"no call of {p.name} in {_where(p.turn, 'all', run)} "
                               f"(calls: {_names(calls)})")
    problems = []
    for index, call in enumerate(mine, start=1):
        problem = _arg_mismatch(p.args, call.args)
        if problem is None:
            return _verdict(True, f"{p.name} call {index} of {len(mine)} has matching args: "
                                  f"{_quote(json.dumps(call.args), 120)}")
        problems.append(f"call {index}: {problem}")
    return _verdict(False, f"no {p.name} call has the expected args; " + "; ".join(problems))


@_register("delegated_to", DelegatedParams, lambda p: f"delegated_to:{p.target}{_scope_suffix(p)}")
def _delegated_to(p: DelegatedParams, run: CaseRun) -> Score:
    turns = _turns(run, p.turn, "all")
    targets = [d.to for t in turns for d in t.result.delegations]
    if p.target in targets:
        return _verdict(True, f"delegated to {p.target} (delegations: {', '.join(targets)})")
    failed = [c.error or "failed" for c in _calls(turns)
              if c.name == "delegate" and c.args.get("to") == p.target and not c.ok]
    note = f"; a delegate call to it failed: {failed[0]}" if failed else ""
    return _verdict(False, f"expected a delegation to {p.target} in {_where(p.turn, 'all', run)}, "
                           f"saw {', '.join(targets) or 'none'}{note}")


def steps_of(record: TurnRecord) -> int | None:
    """Model calls in one turn: the top-level ``agent`` node starts in the recorded
    events (each is one agent<->tools round), else the usage's llm_calls, else None."""
    starts = [e for e in record.events if e.get("type") == "node_start"]
    if starts:
        return sum(1 for e in starts
                   if e.get("data", {}).get("node") == "agent" and e.get("data", {}).get("depth", 0) == 0)
    if record.result is not None and record.result.usage.llm_calls:
        return record.result.usage.llm_calls
    return None


@_register("max_steps", MaxStepsParams, lambda p: f"max_steps<={p.max}{_scope_suffix(p)}")
def _max_steps(p: MaxStepsParams, run: CaseRun) -> Score:
    counts = [(t.number, steps_of(t.record)) for t in _turns(run, p.turn, "all")]
    unknown = [n for n, s in counts if s is None]
    if unknown:
        return _skipped(f"no step data for turn {unknown[0]} (node events were not recorded and "
                        "the model reported no usage)")
    worst_turn, worst = max(counts, key=lambda c: c[1] or 0)
    per_turn = ", ".join(f"turn {n}: {s}" for n, s in counts)
    return _verdict((worst or 0) <= p.max, f"expected <= {p.max} model call(s) per turn, the most was "
                                           f"{worst} in turn {worst_turn} ({per_turn})")


# --------------------------------------------------------------------------- checks and evidence


@_register("checks_pass", ChecksPassParams,
           lambda p: "checks_pass" + ("" if p.checks == list(CHECK_IDS) else ":" + ",".join(p.checks))
           + _scope_suffix(p))
def _checks_pass(p: ChecksPassParams, run: CaseRun) -> Score:
    where = _where(p.turn, "final", run, answers=True)
    problems: list[str] = []
    not_applicable: set[str] = set()
    for t in _turns(run, p.turn, "final"):
        recorded = {c.name: c for c in t.result.checks}
        for name in p.checks:
            check = recorded.get(name)
            if check is None:
                problems.append(f"turn {t.number}: {name} not recorded")
            elif check.status == "fail":
                problems.append(f"turn {t.number}: {name} failed ({_short(check.feedback, 100)})")
            elif check.status == "not_applicable":
                not_applicable.add(name)
    if problems:
        return _verdict(False, f"expected {len(p.checks)} check(s) to pass in {where}; "
                               + "; ".join(problems))
    na = f" (not applicable: {', '.join(sorted(not_applicable))})" if not_applicable else ""
    return _verdict(True, f"{len(p.checks)} check(s) pass in {where}{na}")


@_register("check", CheckParams, lambda p: f"check:{p.name}={p.status}{_scope_suffix(p)}")
def _check(p: CheckParams, run: CaseRun) -> Score:
    seen = []
    for t in _turns(run, p.turn, "final"):
        check = next((c for c in t.result.checks if c.name == p.name), None)
        if check is None:
            return _verdict(False, f"expected {p.name} = {p.status}; turn {t.number} did not record it")
        detail = check.feedback or check.evidence
        seen.append(f"turn {t.number}: {check.status}" + (f" ({_short(detail, 100)})" if detail else ""))
        if check.status != p.status:
            return _verdict(False, f"expected {p.name} = {p.status}, saw {seen[-1]}")
    return _verdict(True, f"{p.name} = {p.status} as expected ({'; '.join(seen)})")


@_register("finding", FindingParams,
           lambda p: f"finding:{p.kind}" + (f":{p.severity}" if p.severity else "") + _scope_suffix(p))
def _finding(p: FindingParams, run: CaseRun) -> Score:
    findings = [f for t in _turns(run, p.turn, "all") for f in t.result.findings]
    want = p.kind + (f" ({p.severity})" if p.severity else "")
    match = next((f for f in findings if f.kind == p.kind and p.severity in (None, f.severity)), None)
    if match is not None:
        return _verdict(True, f"found {want}" + (f" at {match.location}" if match.location else "")
                              + f": {_short(match.summary, 100)}")
    seen = ", ".join(f"{f.kind} ({f.severity})" for f in findings) or "none"
    return _verdict(False, f"expected a finding {want} in {_where(p.turn, 'all', run)}, saw {seen}")


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    if low is not None:
        return f">= {low:g}"
    return f"<= {high:g}" if high is not None else "present"


@_register("measurement", MeasurementParams,
           lambda p: f"measurement:{p.name}" + (f">={p.min:g}" if p.min is not None else "")
           + (f"<={p.max:g}" if p.max is not None else "") + _scope_suffix(p))
def _measurement(p: MeasurementParams, run: CaseRun) -> Score:
    measured = [m for t in _turns(run, p.turn, "all") for m in t.result.measurements]
    mine = [m for m in measured if m.name == p.name and p.source in (None, m.source)]
    want = f"{p.name}{f' from {p.source}' if p.source else ''} {_bounds(p.min, p.max)}"
    if not mine:
        names = ", ".join(sorted({f"{m.name} ({m.source})" for m in measured})) or "none"
        return _verdict(False, f"expected {want}; not measured in {_where(p.turn, 'all', run)} "
                               f"(measured: {names})")
    values = ", ".join(f"{m.value:g} {m.unit} ({m.source}{', ' + m.target if m.target else ''})"
                       for m in mine)
    ok = all((p.min is None or m.value >= p.min) and (p.max is None or m.value <= p.max) for m in mine)
    return _verdict(ok, f"expected {want}, saw {values}")


# --------------------------------------------------------------------------- cost of the run


@_register("latency", LatencyParams, lambda p: f"latency<={p.max_ms:g}ms")
def _latency(p: LatencyParams, run: CaseRun) -> Score:
    total = run.duration_ms or sum(t.duration_ms for t in run.turns)
    if not total:
        return _skipped("the run recorded no duration")
    return _verdict(total <= p.max_ms, f"case took {total:,.0f} ms over {len(run.turns)} turn(s), "
                                       f"max {p.max_ms:,.0f} ms")


@_register("tokens", TokensParams, lambda p: f"tokens<={p.max}")
def _tokens(p: TokensParams, run: CaseRun) -> Score:
    results = [t.result for t in run.turns if t.result is not None]
    tokens_in = sum(r.usage.input_tokens for r in results)
    tokens_out = sum(r.usage.output_tokens for r in results)
    total = tokens_in + tokens_out
    note = " (the offline engine reports no usage)" if total == 0 and all(
        r.model == OFFLINE_MODEL for r in results) else ""
    return _verdict(total <= p.max, f"used {total:,} tokens ({tokens_in:,} in + {tokens_out:,} out), "
                                    f"max {p.max:,}{note}")


def _price(prices: dict[str, Price], model: str) -> Price | None:
    """The price of a model spec, given either as the spec or as the bare model name."""
    return prices.get(model) or prices.get(model.partition(":")[2])


@_register("cost", CostParams, lambda p: f"cost<=${p.max_usd:g}")
def _cost(p: CostParams, run: CaseRun) -> Score:
    total = 0.0
    parts = []
    for record in run.turns:
        result = record.result
        if result is None:
            continue
        usage = result.usage
        if result.model == OFFLINE_MODEL or usage.input_tokens + usage.output_tokens == 0:
            continue  # nothing was billed
        price = _price(p.prices, result.model)
        if price is None:
            return _skipped(f"no price for model {result.model!r}: give prices: {{{result.model!r}: "
                            "{input: <$/Mtok>, output: <$/Mtok>}}")
        cached = usage.cache_read_tokens if price.cache_read is not None else 0
        dollars = ((usage.input_tokens - cached) * price.input + cached * (price.cache_read or 0.0)
                   + usage.output_tokens * price.output) / 1e6
        total += dollars
        parts.append(f"{result.model} ${dollars:.4f}")
    detail = ", ".join(parts) or "no billed tokens"
    return _verdict(total <= p.max_usd, f"cost ${total:.4f} ({detail}), max ${p.max_usd:g}")


# --------------------------------------------------------------------------- llm_rubric

GRADER_SYSTEM = """\
You grade answers of a performance-engineering assistant against a rubric.
Judge only what the answer says, against the rubric. Reply with one JSON object and nothing
else: {"pass": true or false, "score": a number from 0 to 1, "reason": "one or two sentences"}"""


class Verdict(BaseModel):
    """The grader's reply."""

    model_config = ConfigDict(populate_by_name=True)
    passed: bool = Field(alias="pass")
    score: float | None = Field(None, ge=0, le=1)
    reason: str = ""


def parse_verdict(text: str) -> Verdict:
    """The first JSON object in ``text`` that is a verdict (bare, fenced or amid prose).

    Raises ValueError saying what was wrong when there is none.
    """
    decoder = json.JSONDecoder()
    problem = "no JSON object in the reply"
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        try:
            return Verdict.model_validate(value)
        except ValidationError as exc:
            problem = "a JSON object that is not a verdict: " + "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
    raise ValueError(problem)


def _grader_prompt(rubric: str, run: CaseRun) -> str:
    questions = "\n\n".join(f"[user, turn {i}]\n{t.input}" for i, t in enumerate(run.turns, start=1))
    final = run.final
    return (f"## Rubric\n{rubric}\n\n## Conversation\n{questions}\n\n"
            f"## Final answer to grade\n{final.answer if final else ''}")


@_register("llm_rubric", RubricParams, lambda p: f"llm_rubric:{_short(p.rubric)}", graded=True)
async def _llm_rubric(p: RubricParams, run: CaseRun, grader: ChatModel | None) -> Score:
    if grader is None:
        return _skipped(NO_GRADER)
    if run.final is None:
        raise ScoreFailure("the final turn recorded no answer to grade")
    from langchain_core.messages import HumanMessage

    from agent.models.base import ModelError, ModelRequest

    request = ModelRequest(system=GRADER_SYSTEM, messages=[HumanMessage(_grader_prompt(p.rubric, run))],
                           max_tokens=1024)
    try:
        reply = await grader.generate(request)
    except ModelError as exc:
        return _verdict(False, f"grader {grader.spec} failed: {exc}")
    text = str(reply.text)
    try:
        verdict = parse_verdict(text)
    except ValueError as exc:
        return _verdict(False, f"grader {grader.spec} gave no usable verdict ({exc}): {_quote(text, 200)}")
    value = verdict.score if verdict.score is not None else float(verdict.passed)
    return Score(scorer="", type="", value=value, passed=verdict.passed,
                 explanation=f"grader {grader.spec}: {'pass' if verdict.passed else 'fail'}"
                             + (f" ({verdict.score:g})" if verdict.score is not None else "")
                             + f": {verdict.reason or 'no reason given'}")


# --------------------------------------------------------------------------- scoring a case


async def _score_one(spec: ScorerSpec, run: CaseRun, grader: ChatModel | None) -> Score:
    try:
        scorer, params = _resolve(spec)
        fn: Any = scorer.fn
        score = await fn(params, run, grader) if scorer.graded else fn(params, run)
    except ScorerSpecError as exc:
        score = _verdict(False, f"invalid scorer: {exc}")
    except ScoreFailure as exc:
        score = _verdict(False, str(exc))
    except Exception as exc:  # a broken scorer must not cost the case its other scores
        score = _verdict(False, f"scorer crashed: {type(exc).__name__}: {exc}")
    return score.model_copy(update={"scorer": label_for(spec), "type": spec.type})


async def score_case(case: Case, run: CaseRun, *, grader: ChatModel | None = None) -> list[Score]:
    """Every scorer of ``case`` over ``run``, in the case's order; [] for an error run.

    Never raises: bad specs, missing turns and crashing scorers become failed scores.
    """
    if run.status == "error":
        return []
    return [await _score_one(spec, run, grader) for spec in case.scorers]
