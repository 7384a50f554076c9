"""Loading eval suites from YAML.

A suite file is one mapping (``name``, ``cases`` and optional ``description``,
``persona``, ``timeout``). Scorers may be written three ways::

    scorers:
      - checks_pass                             # a type without parameters
      - contains: "p95"                         # shorthand: params = {"value": "p95"}
      - {type: tool_used, name: load_test, min: 1, label: "load tested"}

Everything is checked when the file loads, not when a case runs: the shape
(pydantic), scorer types and parameters (:func:`evals.scorers.validate_spec`),
fixture kinds and options (:func:`evals.fixtures.validate_fixture`) and case
ids (unique within a suite). Every error names the file, the case and the
field, so a typo in a 40-case suite is found in one read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evals.model import ErrorInfo, Suite


class SuiteError(Exception):
    """A suite cannot be loaded or a case cannot be prepared; ``code`` is stable."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, hint=self.hint)


def scorer_spec(raw: Any) -> Any:
    """The YAML forms of a scorer as the mapping :class:`ScorerSpec` validates; anything
    else is returned as is, for pydantic to reject with its location."""
    if isinstance(raw, str):
        return {"type": raw}
    if not isinstance(raw, dict):
        return raw
    if "type" in raw:
        params = {k: v for k, v in raw.items() if k not in ("type", "label")}
        return {"type": raw["type"], "params": params, "label": raw.get("label", "")}
    keys = [k for k in raw if k != "label"]
    if len(keys) != 1:
        return raw  # neither form: pydantic names the missing "type"
    return {"type": keys[0], "params": {"value": raw[keys[0]]}, "label": raw.get("label", "")}


def _normalised(doc: dict[str, Any]) -> dict[str, Any]:
    cases = doc.get("cases")
    if not isinstance(cases, list):
        return doc
    out = []
    for case in cases:
        if isinstance(case, dict) and isinstance(case.get("scorers"), list):
            case = {**case, "scorers": [scorer_spec(s) for s in case["scorers"]]}
        out.append(case)
    return {**doc, "cases": out}


def _where(doc: dict[str, Any], loc: tuple[int | str, ...]) -> str:
    """A validation error's location in words: ``case "x", scorers[2].type``."""
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int):
        cases = doc.get("cases") or []
        raw = cases[loc[1]] if loc[1] < len(cases) else None
        name = raw.get("id") if isinstance(raw, dict) else None
        case = f'case "{name}"' if name else f"case #{loc[1] + 1}"
        rest = loc[2:]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest).lstrip(".")
        return f"{case}, field {field}" if field else case
    return "field " + ".".join(map(str, loc)) if loc else "the file"


def load_suite(path: str | Path) -> Suite:
    """Parse and validate one suite file; raise :class:`SuiteError` naming what is wrong."""
    import yaml
    from pydantic import ValidationError

    from evals.fixtures import validate_fixture
    from evals.scorers import ScorerSpecError, validate_spec

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SuiteError("suite_not_found", f"cannot read {path}: {exc.strerror or exc}",
                         "check the path of the suite file") from None
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SuiteError("suite_invalid_yaml", f"{path}: not valid YAML: {exc}",
                         "fix the YAML syntax at the position shown") from None
    if not isinstance(doc, dict):
        raise SuiteError("suite_invalid", f"{path}: a suite is a mapping with name and cases",
                         "start the file with `name:` and `cases:`")
    doc = _normalised(doc)
    try:
        suite = Suite.model_validate({**doc, "path": str(path),
                                      "sha256": hashlib.sha256(data).hexdigest()})
    except ValidationError as exc:
        problems = [f"{_where(doc, e['loc'])}: {e['msg']}" for e in exc.errors()]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise SuiteError("suite_invalid", f"{path}: {'; '.join(problems[:3])}{more}",
                         "fix these fields; the suite format is described in the README") from None
    seen: set[str] = set()
    for case in suite.cases:
        if case.id in seen:
            raise SuiteError("duplicate_case_id", f'{path}: case id "{case.id}" is used twice',
                             "give every case of a suite its own id")
        seen.add(case.id)
        for index, spec in enumerate(case.scorers):
            try:
                validate_spec(spec)
            except ScorerSpecError as exc:
                raise SuiteError("invalid_scorer",
                                 f'{path}: case "{case.id}", scorers[{index}] ({spec.type}): {exc}',
                                 "see the scorer types and their parameters in the README"
                                 ) from None
        if case.fixture is not None:
            try:
                validate_fixture(case.fixture)
            except SuiteError as exc:
                raise SuiteError(exc.code, f'{path}: case "{case.id}", fixture: {exc.message}',
                                 exc.hint) from None
    return suite


def load_suites(paths: Iterable[str | Path]) -> list[Suite]:
    """Load several suite files; two suites with one name would make results ambiguous."""
    suites: list[Suite] = []
    for path in paths:
        suite = load_suite(path)
        clash = next((s for s in suites if s.name == suite.name), None)
        if clash is not None:
            raise SuiteError("duplicate_suite_name",
                             f'{suite.path} and {clash.path} are both named "{suite.name}"',
                             "give every suite file its own name")
        suites.append(suite)
    if not suites:
        raise SuiteError("no_suites", "no suite files were given",
                         "pass one or more YAML files, e.g. evals/suites/*.yaml")
    return suites


def select(suites: list[Suite], tags: Iterable[str]) -> list[Suite]:
    """The suites restricted to cases carrying any of ``tags`` (all cases when none given);
    suites left without cases are dropped."""
    wanted = set(tags)
    if not wanted:
        return suites
    kept = []
    for suite in suites:
        cases = [c for c in suite.cases if wanted & set(c.tags)]
        if cases:
            kept.append(suite.model_copy(update={"cases": cases}))
    return kept
