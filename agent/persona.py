"""Personas as data: parse a persona Markdown file into a typed, validated model.

A persona file is Markdown with YAML front matter (``name``, ``description``,
``version``, optional ``model`` and ``tools``). Its ``##`` sections carry the
persona's tables: Delegation, Pre-Response Checks, Targets, Principles and
Checklist are parsed into fields; every other section is kept as Markdown so
the system prompt can render it. Errors name the file, the line and what is
wrong, because a persona is written by people.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from prompts import personas_dir

#: The five check names of the public TurnResult, in the persona's order.
CHECK_IDS: tuple[str, ...] = (
    "baseline_established",
    "impact_quantified",
    "monitoring_included",
    "implementation_quality",
    "regression_prevention",
)
_CHECK_TITLES = {
    "baseline established": "baseline_established",
    "impact quantified": "impact_quantified",
    "monitoring included": "monitoring_included",
    "implementation quality": "implementation_quality",
    "regression prevention": "regression_prevention",
}
REQUIRED_SECTIONS = ("delegation", "pre-response checks", "targets", "principles", "checklist")


class PersonaError(Exception):
    """A persona file is malformed: says which file, which line and what is wrong."""

    def __init__(self, path: Path | str, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem


class DelegationTarget(BaseModel):
    name: str
    when: str


class Check(BaseModel):
    id: str = Field(description="one of the five fixed check names")
    title: str
    questions: list[str]


class Target(BaseModel):
    """A row of the targets table, machine-readable as a budget."""

    metric: str = Field(description="human label, e.g. 'API p95 latency'")
    measurement: str = Field(description="snake_case measurement name, e.g. p95_latency")
    op: str
    value: float
    unit: str = ""

    @property
    def budget(self) -> str:
        """The comparison in the ``Measurement.budget`` form, e.g. ``"<200"``."""
        return f"{self.op}{self.value:g}"

    @property
    def display(self) -> str:
        return f"{self.op} {self.value:g}{self.unit}"


class Principle(BaseModel):
    name: str
    target_percent: float
    practices: list[str]


class Section(BaseModel):
    title: str
    body: str


class Persona(BaseModel):
    """A parsed persona: what the runtime needs from the file, typed."""

    name: str
    description: str
    version: str
    model: str | None = None
    tools: list[str] = Field(default_factory=list)
    title: str
    intro: str
    delegation: list[DelegationTarget]
    checks: list[Check]
    targets: list[Target]
    principles: list[Principle]
    checklist: list[str]
    sections: list[Section] = Field(default_factory=list, description="other ## sections")
    path: str = ""

    def target_for(self, measurement: str) -> Target | None:
        """The target whose measurement name is ``measurement``, if any."""
        return next((t for t in self.targets if t.measurement == measurement), None)

    def budgets(self) -> dict[str, str]:
        """The targets as a budget mapping with units, e.g. ``{"p95_latency": "<200 ms"}``.

        Units stay attached so a measurement in other units (LCP in ms against
        "< 2.5 s") is converted rather than compared raw.
        """
        return {t.measurement: f"{t.budget} {t.unit}".strip() for t in self.targets}

    def delegate(self, name: str) -> DelegationTarget | None:
        return next((d for d in self.delegation if d.name == name), None)


# --------------------------------------------------------------------------- parsing

_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.S)
_TARGET = re.compile(r"^(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)\s*(ms|s|%|req/s)?$")
_CHECK_HEAD = re.compile(r"^(\d+)\.\s+(.+)$")
_PRINCIPLE_HEAD = re.compile(r"^(.+?)\s*\(Target:\s*(\d+(?:\.\d+)?)\s*%\)\s*$", re.I)
_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


class _Block:
    """A heading with the lines under it, remembering line numbers for errors."""

    def __init__(self, title: str, line: int) -> None:
        self.title = title
        self.line = line
        self.lines: list[tuple[int, str]] = []

    @property
    def text(self) -> str:
        return "\n".join(text for _, text in self.lines).strip()


def _split(lines: list[tuple[int, str]], marker: str) -> tuple[list[tuple[int, str]], list[_Block]]:
    """Split lines at headings starting with ``marker`` (``## `` or ``### ``), outside code."""
    preamble: list[tuple[int, str]] = []
    blocks: list[_Block] = []
    in_code = False
    for number, text in lines:
        if text.lstrip().startswith("```"):
            in_code = not in_code
        if not in_code and text.startswith(marker):
            blocks.append(_Block(text[len(marker):].strip(), number))
            continue
        (blocks[-1].lines if blocks else preamble).append((number, text))
    return preamble, blocks


def _table(path: Path, block: _Block, columns: int) -> list[tuple[int, list[str]]]:
    """Rows of the first Markdown table in ``block`` (header and rule skipped)."""
    rows: list[tuple[int, list[str]]] = []
    seen_header = False
    for number, text in block.lines:
        stripped = text.strip()
        if not stripped.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in stripped.strip("|").split("|")]
        if not seen_header:
            seen_header = True
            if len(cells) != columns:
                raise PersonaError(
                    path, number, f"table under '{block.title}' needs {columns} columns, "
                    f"found {len(cells)}"
                )
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue
        if len(cells) != columns:
            raise PersonaError(path, number, f"row has {len(cells)} cells, expected {columns}")
        rows.append((number, cells))
    if not rows:
        raise PersonaError(path, block.line, f"section '{block.title}' needs a table with rows")
    return rows


def _bullets(block: _Block) -> list[tuple[int, str]]:
    items = []
    for number, text in block.lines:
        stripped = text.strip()
        if stripped.startswith(("- ", "* ")):
            item = stripped[2:].strip()
            item = re.sub(r"^\[[ xX]\]\s*", "", item)
            items.append((number, item))
    return items


def _parse_checks(path: Path, block: _Block) -> list[Check]:
    _, subs = _split(block.lines, "### ")
    checks: list[Check] = []
    for sub in subs:
        head = _CHECK_HEAD.match(sub.title)
        if not head:
            raise PersonaError(path, sub.line, f"check heading '{sub.title}' must be 'N. Title'")
        title = head.group(2).strip()
        check_id = _CHECK_TITLES.get(title.lower())
        if check_id is None:
            raise PersonaError(
                path, sub.line,
                f"unknown check '{title}'; the five checks are: "
                + ", ".join(t.title() for t in _CHECK_TITLES),
            )
        questions = [q for _, q in _bullets(sub)]
        if not questions:
            raise PersonaError(path, sub.line, f"check '{title}' has no questions")
        checks.append(Check(id=check_id, title=title, questions=questions))
    ids = [c.id for c in checks]
    if sorted(ids) != sorted(CHECK_IDS):
        missing = sorted(set(CHECK_IDS) - set(ids))
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        raise PersonaError(
            path, block.line,
            f"the five checks must each appear once (missing: {missing or 'none'}, "
            f"repeated: {duplicated or 'none'})",
        )
    return sorted(checks, key=lambda c: CHECK_IDS.index(c.id))


def _parse_targets(path: Path, block: _Block) -> list[Target]:
    targets = []
    for number, (metric, target, measurement) in _table(path, block, 3):
        match = _TARGET.match(target.replace(" ", " ").strip())
        if not match:
            raise PersonaError(
                path, number,
                f"target '{target}' must be an operator, a number and an optional unit "
                "(ms, s, %, req/s), e.g. '< 200ms'",
            )
        measurement = measurement.strip("` ")
        if not _SNAKE.match(measurement):
            raise PersonaError(path, number, f"'{measurement}' must be a snake_case name")
        targets.append(
            Target(metric=metric, measurement=measurement, op=match.group(1),
                   value=float(match.group(2)), unit=match.group(3) or "")
        )
    return targets


def _parse_principles(path: Path, block: _Block) -> list[Principle]:
    _, subs = _split(block.lines, "### ")
    principles = []
    for sub in subs:
        head = _PRINCIPLE_HEAD.match(sub.title)
        if not head:
            raise PersonaError(
                path, sub.line, f"principle heading '{sub.title}' must be 'Name (Target: NN%)'"
            )
        principles.append(
            Principle(name=head.group(1).strip(), target_percent=float(head.group(2)),
                      practices=[b for _, b in _bullets(sub)])
        )
    if not principles:
        raise PersonaError(path, block.line, "section 'Principles' has no '### Name (Target: NN%)'")
    return principles


def parse_persona(text: str, path: Path | str = "<string>") -> Persona:
    """Parse persona Markdown; raise :class:`PersonaError` naming file, line and problem."""
    import yaml

    path = Path(path)
    front = _FRONT.match(text)
    if not front:
        raise PersonaError(path, 1, "missing YAML front matter between '---' lines")
    try:
        meta = yaml.safe_load(front.group(1)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1
        raise PersonaError(path, line, f"front matter is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise PersonaError(path, 2, "front matter must be a mapping of keys to values")
    for key in ("name", "description", "version"):
        if not meta.get(key):
            raise PersonaError(path, 2, f"front matter needs '{key}'")

    body_start = front.group(0).count("\n") + 1
    lines = list(enumerate(text[front.end():].splitlines(), start=body_start))
    preamble, blocks = _split(lines, "## ")
    title = next((t[2:].strip() for _, t in preamble if t.startswith("# ")), str(meta["name"]))
    intro = "\n".join(t for _, t in preamble if not t.startswith("# ")).strip()

    by_name = {b.title.lower(): b for b in blocks}
    for required in REQUIRED_SECTIONS:
        if required not in by_name:
            raise PersonaError(path, body_start, f"missing required section '## {required.title()}'")

    delegation = [
        DelegationTarget(name=name.strip("` "), when=when)
        for _, (name, when) in _table(path, by_name["delegation"], 2)
    ]
    fields: dict[str, Any] = {
        "name": str(meta["name"]),
        "description": " ".join(str(meta["description"]).split()),
        "version": str(meta["version"]),
        "model": meta.get("model"),
        "tools": list(meta.get("tools") or []),
        "title": title,
        "intro": intro,
        "delegation": delegation,
        "checks": _parse_checks(path, by_name["pre-response checks"]),
        "targets": _parse_targets(path, by_name["targets"]),
        "principles": _parse_principles(path, by_name["principles"]),
        "checklist": [item for _, item in _bullets(by_name["checklist"])],
        "sections": [
            Section(title=b.title, body=b.text)
            for b in blocks if b.title.lower() not in REQUIRED_SECTIONS
        ],
        "path": str(path),
    }
    if path.suffix == ".md" and path.stem != fields["name"]:
        raise PersonaError(path, 2, f"name '{fields['name']}' must match the file name")
    try:
        return Persona(**fields)
    except ValidationError as exc:
        raise PersonaError(path, 2, f"invalid persona: {exc}") from None


def load_persona_file(path: Path | str) -> Persona:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaError(path, 0, f"cannot read the file: {exc}") from None
    return parse_persona(text, path)


# --------------------------------------------------------------------------- the library

class PersonaLibrary(BaseModel):
    """All personas of a folder, validated together (delegation targets must exist)."""

    personas: dict[str, Persona]

    def get(self, name: str) -> Persona:
        try:
            return self.personas[name]
        except KeyError:
            raise PersonaError(
                name, 0, f"no persona named '{name}'; known: {', '.join(sorted(self.personas))}"
            ) from None


def validate_library(personas: list[Persona], known_tools: set[str]) -> PersonaLibrary:
    """Check cross-file rules: unique names, delegation targets exist, tools exist."""
    by_name: dict[str, Persona] = {}
    for persona in personas:
        if persona.name in by_name:
            raise PersonaError(
                persona.path, 2,
                f"persona name '{persona.name}' is also used by {by_name[persona.name].path}",
            )
        by_name[persona.name] = persona
    for persona in personas:
        for target in persona.delegation:
            if target.name == persona.name:
                raise PersonaError(persona.path, 0, f"'{persona.name}' delegates to itself")
            if target.name not in by_name:
                raise PersonaError(
                    persona.path, 0,
                    f"delegation target '{target.name}' has no persona file "
                    f"(known: {', '.join(sorted(by_name))})",
                )
        unknown = [t for t in persona.tools if t not in known_tools]
        if unknown:
            raise PersonaError(
                persona.path, 2,
                f"unknown tools {unknown}; available: {', '.join(sorted(known_tools))}",
            )
    return PersonaLibrary(personas=by_name)


def agent_tool_names() -> set[str]:
    """Names a persona may list: the measurement tools plus the agent's own tools."""
    from tools import tool_names

    return set(tool_names()) | {"knowledge_search", "delegate"}


@cache
def persona_library(folder: str | None = None) -> PersonaLibrary:
    """Load and validate every ``*.md`` persona in ``folder`` (the shipped ones by default).

    Cached: personas are read once per process, not once per turn.
    """
    root = Path(folder) if folder else personas_dir()
    files = sorted(root.glob("*.md"))
    if not files:
        raise PersonaError(root, 0, "no persona files (*.md) in this folder")
    return validate_library([load_persona_file(f) for f in files], agent_tool_names())


def get_persona(name: str) -> Persona:
    return persona_library().get(name)
