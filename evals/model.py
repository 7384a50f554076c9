"""The data of an eval run: suites and cases as written, and the run log as recorded.

Suites are YAML files (``evals/suites/*.yaml``) parsed into :class:`Suite`.
A run produces one :class:`RunLog`: every case's every epoch with its full
trajectory (each turn's TurnResult, run events, messages), so scorers, which
are pure functions of a :class:`CaseRun`, can re-score a saved run without
running the agent again. The log is versioned (:data:`LOG_VERSION`); readers
refuse a version they do not know.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.results import TurnResult

#: Bumped whenever a field changes meaning or disappears (adding one is compatible).
LOG_VERSION = 1
LOG_FORMAT = "perfagent-eval-log"


# --------------------------------------------------------------------------- suites


class ScorerSpec(BaseModel):
    """One scorer of a case: its type and parameters.

    YAML accepts ``- contains: "p95"`` (shorthand: the value is the scorer's
    main parameter) or ``- {type: tool_used, name: load_test, min: 1}``.
    """

    model_config = ConfigDict(extra="forbid")

    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    #: Shown in reports; defaults to the type and its main parameter.
    label: str = ""


class Fixture(BaseModel):
    """A target the runner starts before a case and stops after it.

    ``kind`` names a fixture of :mod:`evals.fixtures` (e.g. ``slow_service``,
    ``shop_database``, ``script``, ``trace_file``); its values are substituted
    into the case's input as ``{name}`` placeholders (e.g. ``{url}``).
    """

    model_config = ConfigDict(extra="forbid")

    kind: str
    options: dict[str, Any] = Field(default_factory=dict)


class Case(BaseModel):
    """One scenario: user turns on one thread, and how to score the outcome."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    #: One user message, or several sent in order on the same thread.
    input: list[str] = Field(min_length=1)
    fixture: Fixture | None = None
    tags: list[str] = Field(default_factory=list)
    scorers: list[ScorerSpec] = Field(min_length=1)
    #: Answer every model call with this text instead of calling the model: how a
    #: suite shows the checks rejecting a draft (``{name}`` placeholders apply).
    draft: str | None = None
    #: Persona answering this case (default: the suite's, then the run's).
    persona: str | None = None
    #: Seconds before the case is abandoned as an error.
    timeout: float | None = Field(None, gt=0)

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Suite(BaseModel):
    """A named set of cases, loaded from one YAML file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    persona: str | None = None
    #: Default per-case timeout in seconds.
    timeout: float = Field(300.0, gt=0)
    cases: list[Case] = Field(min_length=1)
    #: Where it was loaded from and the SHA-256 of that file (filled in by the loader).
    path: str = ""
    sha256: str = ""


# --------------------------------------------------------------------------- results


class Score(BaseModel):
    """What one scorer said about one epoch of one case."""

    scorer: str = Field(description="the scorer's label")
    type: str
    #: 0..1; pass/fail scorers use 0 or 1.
    value: float
    #: None when the scorer was skipped (``skipped_reason`` says why).
    passed: bool | None
    explanation: str = ""
    skipped_reason: str = ""


class ErrorInfo(BaseModel):
    """Why a case could not be run to the end (an error, as distinct from a failure)."""

    code: str
    message: str
    hint: str = ""


class TurnRecord(BaseModel):
    """One user turn of a case, as it ran."""

    input: str
    result: TurnResult | None = None
    #: Every run event of the turn except text deltas (the answer holds the text).
    events: list[dict[str, Any]] = Field(default_factory=list)
    duration_ms: float = 0.0
    error: ErrorInfo | None = None


class CaseRun(BaseModel):
    """One epoch of one case: its trajectory and its scores."""

    suite: str
    case_id: str
    epoch: int = Field(ge=1)
    tags: list[str] = Field(default_factory=list)
    status: Literal["ok", "error"]
    error: ErrorInfo | None = None
    turns: list[TurnRecord] = Field(default_factory=list)
    #: The thread's messages after the last turn (user, assistant and tool messages).
    messages: list[dict[str, Any]] = Field(default_factory=list)
    thread_id: str = ""
    attempts: int = 1
    started_at: float = 0.0
    duration_ms: float = 0.0
    #: True if the turns' model replies came from the response cache.
    cached: bool = False
    scores: list[Score] = Field(default_factory=list)

    @property
    def final(self) -> TurnResult | None:
        """The last turn's result (what most scorers look at)."""
        return self.turns[-1].result if self.turns else None

    @property
    def passed(self) -> bool | None:
        """All scorers that ran passed; None for an error or when every scorer skipped."""
        if self.status == "error":
            return None
        verdicts = [s.passed for s in self.scores if s.passed is not None]
        return all(verdicts) if verdicts else None


class RunConfig(BaseModel):
    """How a run was made: enough to repeat it."""

    model: str
    grader_model: str | None = None
    persona: str = "performance-engineer"
    epochs: int = 1
    concurrency: int = 1
    seed: int = 0
    timeout: float | None = None
    retries: int = 2
    cache: bool = True
    tags: list[str] = Field(default_factory=list)


class RunLog(BaseModel):
    """A whole eval run: what was run, how, and every case-epoch's record."""

    format: Literal["perfagent-eval-log"] = LOG_FORMAT
    version: int = LOG_VERSION
    run_id: str
    created_at: float
    perfagent_version: str = ""
    git_rev: str | None = None
    config: RunConfig
    suites: list[Suite]
    runs: list[CaseRun] = Field(default_factory=list)
    duration_ms: float = 0.0

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > LOG_VERSION:
            raise ValueError(f"log version {value} is newer than this perfagent reads "
                             f"({LOG_VERSION}); upgrade perfagent")
        return value

    def case(self, suite: str, case_id: str) -> Case:
        for s in self.suites:
            if s.name == suite:
                for c in s.cases:
                    if c.id == case_id:
                        return c
        raise KeyError(f"{suite}/{case_id}")


# --------------------------------------------------------------------------- summaries


class CaseSummary(BaseModel):
    """One case over its epochs."""

    suite: str
    case_id: str
    tags: list[str] = Field(default_factory=list)
    epochs: int
    passes: int
    failures: int
    errors: int
    #: Mean over epochs of the epoch's mean scorer value (errors count as 0).
    mean_score: float
    #: Standard error of that mean (0 for one epoch).
    stderr: float
    #: Unbiased estimate of P(at least one of k epochs passes), k = epochs.
    pass_at_k: float
    #: Estimate of P(all k epochs pass) (tau-bench's pass^k).
    pass_hat_k: float
    #: Passed in some epochs and failed in others.
    flaky: bool
    status: Literal["pass", "fail", "error", "flaky", "skipped"]


class PrincipleCompliance(BaseModel):
    """How often the runs honoured one Constitutional principle of the persona."""

    name: str
    target_percent: float
    #: The rule applied, in words.
    rule: str
    applicable: int
    compliant: int
    rate_percent: float | None
    met: bool | None


class CheckRate(BaseModel):
    """How often one of the five pre-response checks passed in the final answers."""

    name: str
    passed: int
    failed: int
    not_applicable: int
    rate_percent: float | None


class ScorerRate(BaseModel):
    type: str
    passed: int
    failed: int
    skipped: int


class RunSummary(BaseModel):
    """The figures a report shows and CI gates on."""

    cases: int
    case_epochs: int
    passed: int
    failed: int
    errors: int
    skipped: int
    #: passed / (passed + failed) over case-epochs, errors excluded; None if nothing scored.
    pass_rate: float | None
    per_case: list[CaseSummary]
    principles: list[PrincipleCompliance]
    checks: list[CheckRate]
    scorers: list[ScorerRate]
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    llm_calls: int = 0
