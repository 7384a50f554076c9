"""``check_budgets``: compare measured values with performance budgets.

This tool measures nothing itself and runs no code: it takes numbers other
tools really measured (a list of measurements, a tool result, or a whole
perfagent ``TurnResult``) and says, for every budget, whether it was met, by
how much, and which budgets nothing measured.

Budget file
===========

YAML (``.yaml``/``.yml``; JSON parses too) or TOML (``.toml``)::

    budgets:
      p95_latency: "<200"          # metric name -> comparison, in the measurement's unit
      error_rate: "<1"
      lcp: {max: 2.5, unit: s}     # mapping form: max (<=) and/or min (>=), unit
      ttfb: "<800 ms"              # a unit may also follow the number
      throughput: ">=50"
      "p95_latency@/checkout": "<400"   # scoped: only measurements whose target
                                        # contains "/checkout"
    tolerance: 0.05                # optional relative tolerance before a breach counts

and the same in TOML::

    tolerance = 0.05
    [budgets]
    p95_latency = "<200"
    lcp = {max = 2.5, unit = "s"}
    "p95_latency@/checkout" = "<400"    # TOML needs quotes around such keys

Rules:

* A comparison is an operator (``<``, ``<=``, ``>``, ``>=``, ``==``), a number
  and an optional unit. The mapping form takes ``max`` (``<=``), ``min``
  (``>=``) or both (two budgets, reported separately), or ``budget`` (a
  comparison string), plus optional ``unit`` and ``tolerance``.
* Without a unit the number is compared with the measured value as it is.
  With a unit, the measured value is converted first: time (ns, us, ms, s,
  min) and sizes (bytes, kB/KiB, MB/MiB, GB/GiB) convert; identical units
  compare directly; anything else is reported as ``unit_mismatch`` rather
  than guessed.
* A key ``metric@text`` applies only to measurements whose ``target``
  contains ``text``; a plain key applies to every measurement of that name,
  one row each.
* ``tolerance`` (a fraction, 0 <= t < 1) widens the limit by ``t * |limit|``
  before a value counts as a breach; such rows pass with ``tolerated`` set.

Result: one row per (budget, matching measurement) with the margin in % of
the limit (positive inside the budget, negative outside), plus one
``missing`` row per budget nothing measured. Findings: ``budget_breach``
(high when more than 20 % beyond the limit, else medium; located at the
measurement's target), ``budget_unmeasured`` (low) and
``budget_unit_mismatch`` (medium). The measurements are echoed with
``budget`` (converted to the measurement's own unit) and ``passed`` set.

Files are read only inside the workspace (``PERFAGENT_WORKSPACE``), and
error messages name the file, the place and the problem but never quote
its content.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tools.base import (
    Finding,
    Measurement,
    ProgressCallback,
    ToolError,
    ToolResult,
    ToolSpec,
    resolve_in_workspace,
)

#: Beyond this share over the limit a breach is ``high``, else ``medium``.
HIGH_SEVERITY_OVER_PERCENT = 20.0

BUDGET_FORMS = (
    '"<200", "<=2.5 s", ">=50", or a mapping {max: 2.5, unit: s}, {min: 50}, '
    '{budget: "<200", unit: ms, tolerance: 0.1}'
)
_FILE_KEYS = ("budgets", "tolerance")
_MAPPING_KEYS = ("max", "min", "budget", "unit", "tolerance")
_COMPARISON = re.compile(
    r"^\s*(?P<op><=|>=|==|<|>)\s*(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
    r"\s*(?P<unit>[A-Za-zµμ%/][A-Za-zµμ%/0-9_]*)?\s*$"
)

# --------------------------------------------------------------------------- units

_SCALES: dict[str, tuple[str, float]] = {}
for _names, _dim, _factor in (
    (("ns", "nanosecond", "nanoseconds"), "time", 1e-9),
    (("us", "µs", "μs", "microsecond", "microseconds"), "time", 1e-6),
    (("ms", "millisecond", "milliseconds", "msec"), "time", 1e-3),
    (("s", "sec", "secs", "second", "seconds"), "time", 1.0),
    (("min", "mins", "minute", "minutes"), "time", 60.0),
    (("b", "byte", "bytes"), "size", 1.0),
    (("kb",), "size", 1e3),
    (("kib",), "size", 1024.0),
    (("mb",), "size", 1e6),
    (("mib",), "size", 1024.0**2),
    (("gb",), "size", 1e9),
    (("gib",), "size", 1024.0**3),
):
    for _name in _names:
        _SCALES[_name] = (_dim, _factor)


def normalize_unit(unit: str) -> str:
    """Lower-case, trimmed unit; ``percent`` is ``%`` and ``rps`` is ``req/s``."""
    text = unit.strip().lower()
    return {"percent": "%", "pct": "%", "rps": "req/s", "requests/s": "req/s"}.get(text, text)


def convert(value: float, from_unit: str, to_unit: str) -> float | None:
    """``value`` in ``from_unit`` expressed in ``to_unit``; None when they do not convert."""
    src, dst = normalize_unit(from_unit), normalize_unit(to_unit)
    if src == dst:
        return value
    a, b = _SCALES.get(src), _SCALES.get(dst)
    if a is None or b is None or a[0] != b[0]:
        return None
    return value * a[1] / b[1]


# --------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class BudgetRule:
    """One comparison for one metric, optionally scoped to a target."""

    key: str  # as written in the budget file, e.g. "p95_latency@/items"
    metric: str
    scope: str | None
    op: str
    limit: float
    unit: str | None
    tolerance: float

    @property
    def comparison(self) -> str:
        """The comparison without unit, e.g. ``<200``."""
        return f"{self.op}{_num(self.limit)}"

    @property
    def display(self) -> str:
        """The comparison with its unit, e.g. ``<2.5 s``."""
        return f"{self.comparison} {self.unit}" if self.unit else self.comparison


@dataclass(frozen=True)
class BudgetSet:
    """Parsed budgets and where they came from (for messages)."""

    rules: tuple[BudgetRule, ...]
    source: str


def _num(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.0f}"


def _invalid(source: str, where: str, problem: str, hint: str = "") -> ToolError:
    return ToolError("invalid_budgets", f"{source}: {where}: {problem}",
                     hint or f"write each budget as {BUDGET_FORMS}")


def _tolerance(value: Any, source: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(source, where, f"tolerance must be a number, not {type(value).__name__}",
                       "a fraction such as 0.05 (5 %)")
    if not (0 <= value < 1) or not math.isfinite(value):
        raise _invalid(source, where, f"tolerance {value!r} is outside [0, 1)",
                       "a fraction such as 0.05 (5 %)")
    return float(value)


def _parse_comparison(text: str, source: str, where: str) -> tuple[str, float, str | None]:
    match = _COMPARISON.match(text)
    if not match:
        raise _invalid(source, where, f"{text!r} is not a comparison")
    number = float(match.group("num"))
    if not math.isfinite(number):
        raise _invalid(source, where, f"{text!r} has no finite limit")
    return match.group("op"), number, match.group("unit")


def _rules_for(key: Any, spec: Any, default_tolerance: float, source: str,
               overrides: float | None) -> list[BudgetRule]:
    where = f"budgets.{key}"
    if not isinstance(key, str) or not key.strip():
        raise _invalid(source, f"budgets key {key!r}", "a budget key must be a metric name",
                       "use the measurement name, e.g. p95_latency, optionally @target-text")
    metric, _, scope = key.strip().partition("@")
    metric = metric.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", metric):
        raise _invalid(source, where, f"{metric!r} is not a metric name",
                       "use the measurement name, e.g. p95_latency, optionally @target-text")
    scope_text = scope.strip() or None
    comparisons: list[tuple[str, float, str | None]] = []
    tolerance = default_tolerance
    unit: str | None = None
    if isinstance(spec, str):
        comparisons.append(_parse_comparison(spec, source, where))
    elif isinstance(spec, Mapping):
        unknown = sorted(str(k) for k in spec if k not in _MAPPING_KEYS)
        if unknown:
            raise _invalid(source, where, f"unknown key(s) {', '.join(unknown)}",
                           f"a budget mapping takes {', '.join(_MAPPING_KEYS)}")
        if "unit" in spec:
            if not isinstance(spec["unit"], str) or not spec["unit"].strip():
                raise _invalid(source, f"{where}.unit", "unit must be a non-empty string",
                               "e.g. ms, s, %, req/s")
            unit = spec["unit"].strip()
        if "tolerance" in spec:
            tolerance = _tolerance(spec["tolerance"], source, f"{where}.tolerance")
        if "budget" in spec:
            if not isinstance(spec["budget"], str):
                raise _invalid(source, f"{where}.budget", "budget must be a comparison string")
            comparisons.append(_parse_comparison(spec["budget"], source, f"{where}.budget"))
        for bound, op in (("max", "<="), ("min", ">=")):
            if bound in spec:
                value = spec[bound]
                if isinstance(value, bool) or not isinstance(value, int | float) \
                        or not math.isfinite(value):
                    raise _invalid(source, f"{where}.{bound}", f"{bound} must be a number",
                                   f"e.g. {{{bound}: 200, unit: ms}}")
                comparisons.append((op, float(value), None))
        if not comparisons:
            raise _invalid(source, where, "the mapping has no max, min or budget")
    elif isinstance(spec, int | float):  # bool too: a bare value has no direction
        raise _invalid(source, where, f"{spec!r} is a bare number; a budget needs a direction",
                       f'write "<{spec}" (at most) or ">={spec}" (at least)')
    else:
        raise _invalid(source, where, f"a budget cannot be a {type(spec).__name__}")
    rules = []
    for op, limit, inline_unit in comparisons:
        if inline_unit and unit and normalize_unit(inline_unit) != normalize_unit(unit):
            raise _invalid(source, where, f"two units given: {inline_unit} and {unit}",
                           "keep one unit per budget")
        rules.append(BudgetRule(key=key.strip(), metric=metric, scope=scope_text, op=op,
                                limit=limit, unit=inline_unit or unit,
                                tolerance=tolerance if overrides is None else overrides))
    return rules


def budgets_from_mapping(data: Mapping[str, Any], *, source: str = "inline budgets",
                         tolerance: float | None = None) -> BudgetSet:
    """Parse budgets given as a mapping.

    Accepts the budget-file document (``{"budgets": {...}, "tolerance": 0.05}``)
    or a plain ``{metric: comparison}`` mapping. ``tolerance`` overrides the
    document's. Raises ToolError ``invalid_budgets`` naming ``source``, the key
    and the problem.
    """
    if not isinstance(data, Mapping):
        raise _invalid(source, "top level", f"expected a mapping, found {type(data).__name__}",
                       "start the file with a budgets: section")
    if "budgets" in data and isinstance(data.get("budgets"), Mapping):
        unknown = sorted(str(k) for k in data if k not in _FILE_KEYS)
        if unknown:
            raise _invalid(source, "top level", f"unknown key(s) {', '.join(unknown)}",
                           "a budget file holds budgets: and optionally tolerance:")
        table: Mapping[str, Any] = data["budgets"]
        default = _tolerance(data["tolerance"], source, "tolerance") \
            if "tolerance" in data else 0.0
    elif "budgets" in data:
        raise _invalid(source, "budgets", "budgets must be a mapping of metric -> comparison",
                       'e.g. budgets: {p95_latency: "<200"}')
    else:
        table, default = data, 0.0
    if tolerance is not None:
        tolerance = _tolerance(tolerance, source, "tolerance")
    rules: list[BudgetRule] = []
    for key, spec in table.items():
        rules.extend(_rules_for(key, spec, default, source, tolerance))
    if not rules:
        raise ToolError("no_budgets", f"{source} holds no budgets",
                        'add at least one, e.g. budgets: {p95_latency: "<200"}')
    return BudgetSet(rules=tuple(rules), source=source)


def budgets_from_file(path: Path, *, tolerance: float | None = None) -> BudgetSet:
    """Read and parse a YAML or TOML budget file (the path is used as given)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ToolError("not_found", f"{path} does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError("invalid_budgets", f"{path}: cannot be read: {type(exc).__name__}",
                        "give a UTF-8 YAML or TOML file") from None
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ToolError("invalid_budgets", f"{path}: not valid TOML: {exc}",
                            "fix the TOML syntax at that line") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ToolError("invalid_budgets", f"{path}: not valid YAML: {where}{problem}",
                            "fix the YAML syntax at that line (quote comparisons such "
                            'as "<200" if in doubt)') from None
    if data is None:
        raise ToolError("no_budgets", f"{path} is empty",
                        'write a budgets: section, e.g. budgets: {p95_latency: "<200"}')
    if not isinstance(data, Mapping) or "budgets" not in data:
        raise _invalid(str(path), "top level", "there is no budgets: section",
                       'start the file with budgets:, e.g. budgets: {p95_latency: "<200"}')
    return budgets_from_mapping(data, source=str(path), tolerance=tolerance)


# --------------------------------------------------------------------------- measurements


class MeasuredValue(BaseModel):
    """A measurement as input: like :class:`Measurement`, with lenient defaults."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="measurement name, e.g. p95_latency")
    value: float
    unit: str = Field(default="", description="ms, s, %, req/s, ...")
    source: str = Field(default="", description="the tool that measured it")
    target: str = Field(default="", description="what was measured: URL, script, query")

    def to_measurement(self) -> Measurement:
        return Measurement(name=self.name, value=self.value, unit=self.unit,
                           source=self.source or "unknown", target=self.target)


def measurements_from_data(data: Any, *, source: str = "measurements") -> list[Measurement]:
    """Measurements from a list, or from any mapping with a top-level ``measurements`` list
    (a tool result, a TurnResult). Raises ToolError ``invalid_measurements``."""
    items = data
    if isinstance(data, Mapping):
        if "measurements" not in data:
            raise ToolError("invalid_measurements",
                            f"{source}: there is no top-level measurements list",
                            "give a list of measurements, a tool result or a TurnResult "
                            "(perfagent ask --json)")
        items = data["measurements"]
    if not isinstance(items, list):
        raise ToolError("invalid_measurements",
                        f"{source}: measurements must be a list, not {type(items).__name__}",
                        'e.g. [{"name": "p95_latency", "value": 231, "unit": "ms"}]')
    out: list[Measurement] = []
    for index, item in enumerate(items):
        if isinstance(item, Measurement):
            out.append(item)
            continue
        try:
            value = MeasuredValue.model_validate(
                item.model_dump() if isinstance(item, BaseModel) else item)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(map(str, first["loc"]))
            where = f"measurements[{index}]" + (f".{loc}" if loc else "")
            raise ToolError("invalid_measurements", f"{source}: {where}: {first['msg']}",
                            "each measurement needs a name and a numeric value "
                            "(unit, source and target are optional)") from None
        if not math.isfinite(value.value):
            raise ToolError("invalid_measurements",
                            f"{source}: measurements[{index}].value is not finite",
                            "only real measured numbers can be checked")
        out.append(value.to_measurement())
    return out


def measurements_from_file(path: Path) -> list[Measurement]:
    """Read measurements from a JSON file (the path is used as given)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ToolError("not_found", f"{path} does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError("invalid_measurements", f"{path}: cannot be read: "
                        f"{type(exc).__name__}", "give a UTF-8 JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolError("invalid_measurements",
                        f"{path}: not valid JSON: line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg}",
                        "give a JSON list of measurements, a tool result or a TurnResult") \
            from None
    return measurements_from_data(data, source=str(path))


# --------------------------------------------------------------------------- checking


class BudgetRow(BaseModel):
    """One budget against one measurement (or against none: ``missing``)."""

    budget_key: str = Field(description="the key as written, e.g. p95_latency@/items")
    metric: str
    target: str = ""
    source: str = Field(default="", description="the tool that measured the value")
    value: float | None = Field(default=None, description="measured value, in unit")
    unit: str = Field(default="", description="the measurement's unit")
    budget: str = Field(description='the comparison with its unit, e.g. "<2.5 s"')
    value_in_budget_unit: float | None = None
    status: Literal["pass", "fail", "missing", "unit_mismatch"]
    passed: bool | None = Field(description="None when nothing comparable was measured")
    tolerated: bool = Field(default=False,
                            description="outside the budget but within its tolerance")
    margin: float | None = Field(
        default=None,
        description="distance to the limit in % of the limit: positive inside the budget, "
        "negative outside (None for a zero limit)")


class BudgetCheckResult(ToolResult):
    """Every budget with its verdict."""

    tool: str = "check_budgets"
    budgets_source: str = Field(description="budget file path, persona or inline")
    rows: list[BudgetRow] = Field(default_factory=list)
    met: int = 0
    breached: int = 0
    missing: int = 0
    unit_mismatches: int = 0
    all_passed: bool = Field(description="no measured budget was breached")
    unbudgeted: list[str] = Field(default_factory=list,
                                  description="measurement names no budget applies to")


def _compare(value: float, op: str, limit: float) -> bool:
    return {"<": value < limit, "<=": value <= limit, ">": value > limit,
            ">=": value >= limit, "==": value == limit}[op]


def _margin(value: float, op: str, limit: float) -> float | None:
    if limit == 0:
        return None
    if op in ("<", "<="):
        share = (limit - value) / abs(limit)
    elif op in (">", ">="):
        share = (value - limit) / abs(limit)
    else:
        share = -abs(value - limit) / abs(limit)
    return round(100.0 * share, 2)


def _verdict(value: float, rule: BudgetRule) -> tuple[bool, bool]:
    """(passed, tolerated) of ``value`` (in the budget's unit) against ``rule``."""
    if _compare(value, rule.op, rule.limit):
        return True, False
    allowance = rule.tolerance * abs(rule.limit)
    if allowance <= 0:
        return False, False
    if rule.op in ("<", "<="):
        ok = _compare(value, rule.op, rule.limit + allowance)
    elif rule.op in (">", ">="):
        ok = _compare(value, rule.op, rule.limit - allowance)
    else:
        ok = abs(value - rule.limit) <= allowance
    return ok, ok


def _relation(value: float, limit: float) -> str:
    return ">" if value > limit else "<" if value < limit else "="


def check(measurements: Sequence[Measurement], budgets: BudgetSet) -> BudgetCheckResult:
    """Compare every measurement with every budget that applies to it."""
    rows: list[BudgetRow] = []
    echoed: list[Measurement] = []
    findings: list[Finding] = []
    used: set[int] = set()
    breaches: list[str] = []
    tolerated: list[str] = []
    keys_with_many: set[str] = set()
    for rule in budgets.rules:
        matches = [(i, m) for i, m in enumerate(measurements)
                   if m.name == rule.metric and (rule.scope is None or rule.scope in m.target)]
        if len(matches) > 1:
            keys_with_many.add(rule.key)
        if not matches:
            rows.append(BudgetRow(budget_key=rule.key, metric=rule.metric, budget=rule.display,
                                  status="missing", passed=None))
            scope = f" for targets containing {rule.scope!r}" if rule.scope else ""
            findings.append(Finding(
                kind="budget_unmeasured", severity="low",
                summary=f"budget {rule.key} {rule.display} has no measurement{scope}",
                evidence=f"budgets from {budgets.source}"))
            continue
        for index, m in matches:
            used.add(index)
            base = {"budget_key": rule.key, "metric": rule.metric, "target": m.target,
                    "source": m.source, "value": m.value, "unit": m.unit,
                    "budget": rule.display}
            value = convert(m.value, m.unit, rule.unit) if rule.unit else m.value
            if value is None:
                rows.append(BudgetRow(**base, status="unit_mismatch", passed=None))
                findings.append(Finding(
                    kind="budget_unit_mismatch", severity="medium",
                    summary=f"{rule.metric} is measured in {m.unit or 'no unit'} but its "
                            f"budget {rule.display} is in {rule.unit}; not compared",
                    location=m.target or None,
                    evidence=f"budgets from {budgets.source}"))
                continue
            passed, within_tolerance = _verdict(value, rule)
            margin = _margin(value, rule.op, rule.limit)
            rows.append(BudgetRow(**base, value_in_budget_unit=round(value, 6),
                                  status="pass" if passed else "fail", passed=passed,
                                  tolerated=within_tolerance, margin=margin))
            # the echo speaks the measurement's own unit
            limit_here = convert(rule.limit, rule.unit, m.unit) if rule.unit else rule.limit
            assert limit_here is not None  # the units converted one way, so the other too
            echoed.append(m.model_copy(update={"budget": f"{rule.op}{_num(limit_here)}",
                                               "passed": passed}))
            label = rule.metric + (f"@{m.target}" if rule.key in keys_with_many and m.target
                                   else "")
            shown = f"{_num(round(m.value, 3))} {m.unit}".rstrip()
            limit_shown = (f"{_num(rule.limit)} {rule.unit}"
                           if rule.unit and normalize_unit(rule.unit) != normalize_unit(m.unit)
                           else _num(rule.limit))
            text = f"{label} {shown} {_relation(value, rule.limit)} {limit_shown}"
            if within_tolerance:
                tolerated.append(text)
            if not passed:
                breaches.append(text)
                over = None if margin is None else -margin
                severity = "high" if over is None or over > HIGH_SEVERITY_OVER_PERCENT \
                    else "medium"
                beyond = f", {over:.1f} % beyond the limit" if over is not None else ""
                findings.append(Finding(
                    kind="budget_breach", severity=severity,
                    summary=f"{text}: budget {rule.display} breached{beyond}",
                    location=m.target or None,
                    evidence=f"measured by {m.source}; budget {rule.key} from "
                             f"{budgets.source}" + (f" (tolerance {rule.tolerance:g})"
                                                     if rule.tolerance else "")))

    met = sum(r.status == "pass" for r in rows)
    failed = sum(r.status == "fail" for r in rows)
    missing = sum(r.status == "missing" for r in rows)
    mismatched = sum(r.status == "unit_mismatch" for r in rows)
    checked = met + failed
    if checked:
        parts = [f"{met}/{checked} budgets met"]
    else:
        parts = [f"no budget could be checked: none of the {len(budgets.rules)} budgets has a "
                 "comparable measurement"]
    if breaches:
        parts.append("breached: " + ", ".join(breaches))
    if tolerated:
        parts.append("within tolerance: " + ", ".join(tolerated))
    if missing:
        parts.append("unmeasured: " + ", ".join(r.budget_key for r in rows
                                                 if r.status == "missing"))
    if mismatched:
        parts.append(f"{mismatched} unit mismatch(es)")
    unbudgeted = sorted({m.name for i, m in enumerate(measurements) if i not in used})
    return BudgetCheckResult(
        summary="; ".join(parts),
        measurements=echoed,
        findings=findings,
        budgets_source=budgets.source,
        rows=rows,
        met=met,
        breached=failed,
        missing=missing,
        unit_mismatches=mismatched,
        all_passed=failed == 0,
        unbudgeted=unbudgeted,
    )


# --------------------------------------------------------------------------- tool


class CheckBudgetsInput(BaseModel):
    """What to check against which budgets."""

    model_config = ConfigDict(extra="forbid")

    measurements: list[MeasuredValue] | str = Field(
        description="the measured values (each with name, value, unit, target), or a path "
        "in the workspace to a JSON file holding a list of them, a tool result or a "
        "TurnResult (anything with a top-level measurements list)")
    budgets: str | dict[str, Any] | None = Field(
        default=None,
        description='a path in the workspace to a YAML or TOML budget file, or an inline '
        'mapping such as {"p95_latency": "<200", "lcp": {"max": 2.5, "unit": "s"}} '
        '(optionally {"budgets": {...}, "tolerance": 0.05}); the persona\'s targets are '
        "the usual choice")
    tolerance: float | None = Field(
        default=None, ge=0, lt=1,
        description="relative tolerance before a breach counts (e.g. 0.05); overrides "
        "the budget file's")


def load_budgets(budgets: str | Mapping[str, Any] | None, *,
                 tolerance: float | None = None) -> BudgetSet:
    """Budgets from a workspace path or an inline mapping; ToolError ``no_budgets`` if None."""
    if budgets is None or (isinstance(budgets, str) and not budgets.strip()):
        raise ToolError(
            "no_budgets", "no budgets were given",
            "pass budgets: a YAML/TOML budget file in the workspace, or a mapping of "
            "metric -> comparison such as the persona's targets, e.g. "
            '{"p95_latency": "<200 ms", "error_rate": "<1"}')
    if isinstance(budgets, str):
        return budgets_from_file(resolve_in_workspace(budgets), tolerance=tolerance)
    return budgets_from_mapping(budgets, source="inline budgets", tolerance=tolerance)


async def run(inp: CheckBudgetsInput, progress: ProgressCallback | None = None
              ) -> BudgetCheckResult:
    """Check the measurements against the budgets (no code runs, nothing is measured)."""
    budgets = load_budgets(inp.budgets, tolerance=inp.tolerance)
    if isinstance(inp.measurements, str):
        measured = measurements_from_file(resolve_in_workspace(inp.measurements))
    else:
        measured = [m.to_measurement() for m in inp.measurements]
    result = check(measured, budgets)
    if progress is not None:
        progress(1.0, result.summary)
    return result


SPEC = ToolSpec(
    name="check_budgets",
    description=(
        "Check measured values (a list, or a JSON file of measurements, a tool result or a "
        "TurnResult) against performance budgets (a YAML/TOML budget file or a mapping such "
        "as the persona's targets). Returns, per budget, the value, pass/fail, the margin "
        "in % and breach findings, and lists budgets that nothing measured. Measures "
        "nothing itself."
    ),
    input_model=CheckBudgetsInput,
    result_model=BudgetCheckResult,
    run=run,
    runs_code=False,
)

__all__ = ["SPEC", "BudgetCheckResult", "BudgetRow", "BudgetRule", "BudgetSet",
           "CheckBudgetsInput", "budgets_from_file", "budgets_from_mapping", "check",
           "convert", "load_budgets", "measurements_from_data", "measurements_from_file",
           "run"]
