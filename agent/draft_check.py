"""Judge any answer, from any model, against a persona's pre-response checks.

The graph runs the same validators on its own drafts; this is the entry for
everything else: ``perfagent check DRAFT.md --evidence EVIDENCE.json``, the
evals, a CI job that lints answers another assistant wrote. The evidence is
what the answer may rest on: a TurnResult's ``measurements``, ``findings`` and
``tool_calls``, plus ``sources`` (texts the answer may quote: tool outputs,
documents) and the ``question`` it answers. A whole TurnResult JSON is accepted as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.persona import Persona, PersonaError
from agent.results import CheckResult


class EvidenceError(Exception):
    """The evidence file cannot be used; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


class Evidence(BaseModel):
    """What a draft may rest on. Other TurnResult fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    measurements: list[dict[str, Any]] = Field(default_factory=list)
    findings: list[dict[str, Any]] = Field(default_factory=list)
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list,
                               description="texts the answer may quote")
    question: str = Field("", description="the user's message the answer replies to")


class CheckReport(BaseModel):
    """The verdict: every check of the persona, and whether none failed."""

    checks: list[CheckResult]
    passed: bool


def load_evidence(path: Path) -> Evidence:
    """Evidence from a JSON file (an evidence object or a TurnResult)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EvidenceError(f"cannot read {path}: {exc.strerror}",
                            "give the path of a JSON file") from None
    except ValueError as exc:
        raise EvidenceError(f"{path} is not JSON: {exc}",
                            "write an object with measurements, findings, tool_calls, "
                            "sources, or save a TurnResult (perfagent ask --json)") from None
    if not isinstance(data, dict):
        raise EvidenceError(f"{path} holds a JSON {type(data).__name__}, not an object",
                            'write an object such as {"measurements": [...], "sources": [...]}')
    try:
        return Evidence.model_validate(data)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                          for e in exc.errors()[:3])
        raise EvidenceError(f"{path}: {where}",
                            "measurements, findings and tool_calls are lists of objects; "
                            "sources a list of strings") from None


def resolve_persona(name_or_path: str | None) -> Persona:
    """A persona by name, or from a file when the value is an existing path."""
    from agent.persona import get_persona, load_persona_file

    if name_or_path and Path(name_or_path).is_file():
        return load_persona_file(name_or_path)
    return get_persona(name_or_path or "performance-engineer")


def check_draft(draft: str, evidence: Evidence | None = None,
                persona: Persona | None = None) -> CheckReport:
    """Run the persona's checks over ``draft`` with ``evidence``.

    Each check the persona declares runs its registered validator; one with no
    validator is ``not_enforced`` (nothing here can judge it; never a pass).
    """
    from agent.checks import CHECKS, CheckInput

    persona = persona or resolve_persona(None)
    evidence = evidence or Evidence()
    data = CheckInput(
        draft=draft, measurements=evidence.measurements, findings=evidence.findings,
        tool_calls=evidence.tool_calls, sources=list(evidence.sources),
        target_values=[(t.value, t.unit) for t in persona.targets],
        question=evidence.question)
    results: list[CheckResult] = []
    for declared in persona.checks:
        validator = CHECKS.get(declared.id)
        if validator is None:
            results.append(CheckResult(
                name=declared.id, status="not_enforced",
                evidence="no deterministic validator for this check",
                feedback=""))
            continue
        results.append(validator(data))
    return CheckReport(checks=results, passed=all(r.status != "fail" for r in results))


__all__ = ["CheckReport", "Evidence", "EvidenceError", "PersonaError", "check_draft",
           "load_evidence", "resolve_persona"]
