"""Persona files parse into typed models; broken files fail with file, line and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.persona import (
    CHECK_IDS,
    PersonaError,
    agent_tool_names,
    load_persona_file,
    parse_persona,
    persona_library,
    validate_library,
)
from prompts import personas_dir, render

MAIN = personas_dir() / "performance-engineer.md"


def test_main_persona_keeps_every_fact_of_the_seed() -> None:
    persona = load_persona_file(MAIN)
    assert persona.name == "performance-engineer"
    assert [d.name for d in persona.delegation] == [
        "security-auditor",
        "database-optimizer",
        "systems-architect",
        "frontend-developer",
        "observability-engineer",
    ]
    assert persona.delegate("systems-architect").when == "Infrastructure provisioning, IaC"
    assert [c.id for c in persona.checks] == list(CHECK_IDS)
    assert all(len(c.questions) == 2 for c in persona.checks)
    budgets = {t.measurement: (t.op, t.value, t.unit) for t in persona.targets}
    assert budgets == {
        "p95_latency": ("<", 200, "ms"),
        "lcp": ("<", 2.5, "s"),
        "fid": ("<", 100, "ms"),
        "cls": ("<", 0.1, ""),
        "cache_hit_rate": (">", 80, "%"),
        "cpu_utilization": ("<", 70, "%"),
    }
    assert persona.target_for("p95_latency").budget == "<200"
    assert {p.name: p.target_percent for p in persona.principles} == {
        "Baseline First": 95,
        "User Impact": 92,
        "Observability": 90,
        "Scalability": 88,
    }
    assert len(persona.checklist) == 10
    assert "Monitoring dashboards live" in persona.checklist
    titles = {s.title for s in persona.sections}
    assert {
        "Bottleneck Analysis",
        "Optimization Strategy",
        "Caching Architecture",
        "Monitoring Setup",
        "Anti-Patterns",
    } <= titles
    anti = next(s for s in persona.sections if s.title == "Anti-Patterns").body
    for row in (
        "N+1 queries",
        "Missing indexes",
        "No caching",
        "Blocking I/O",
        "No connection pooling",
    ):
        assert row in anti


def test_library_validates_all_shipped_personas() -> None:
    library = persona_library()
    assert set(library.personas) == {
        "performance-engineer",
        "security-auditor",
        "database-optimizer",
        "systems-architect",
        "frontend-developer",
        "observability-engineer",
    }
    for persona in library.personas.values():
        assert [c.id for c in persona.checks] == list(CHECK_IDS)
        assert persona.delegation, persona.name
        assert set(persona.tools) <= agent_tool_names()


def test_system_prompt_renders_persona_tables() -> None:
    persona = load_persona_file(MAIN)
    prompt = render("system.md.j2", persona=persona)
    assert "< 200ms" in prompt and "> 80%" in prompt
    assert "database-optimizer" in prompt and "Regression Prevention" in prompt


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = MAIN.read_text().replace(old, new, 1)
    path = tmp_path / "performance-engineer.md"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("old", "new", "line_text", "problem"),
    [
        (
            "| API p95 latency | < 200ms |",
            "| API p95 latency | fast |",
            "| API p95 latency | fast |",
            "must be an operator",
        ),
        (
            "### 3. Monitoring Included",
            "### 3. Monitoring Maybe",
            "### 3. Monitoring Maybe",
            "unknown check",
        ),
        (
            "### Scalability (Target: 88%)",
            "### Scalability",
            "### Scalability",
            "Name (Target: NN%)",
        ),
    ],
)
def test_malformed_file_names_file_line_and_problem(
    tmp_path: Path, old: str, new: str, line_text: str, problem: str
) -> None:
    path = _broken(tmp_path, old, new)
    with pytest.raises(PersonaError) as caught:
        load_persona_file(path)
    error = caught.value
    assert error.path == str(path)
    assert problem in error.problem
    assert path.read_text().splitlines()[error.line - 1].startswith(line_text)
    assert str(error).startswith(f"{path}:{error.line}: ")


def test_missing_front_matter_and_sections() -> None:
    with pytest.raises(PersonaError, match="front matter"):
        parse_persona("# no front matter\n")
    with pytest.raises(PersonaError, match="missing required section '## Checklist'"):
        parse_persona(
            "---\nname: x\ndescription: d\nversion: 1\n---\n# X\n"
            "## Delegation\n| Delegate to | When |\n|---|---|\n| a | b |\n"
            "## Pre-Response Checks\n## Targets\n## Principles\n"
        )


def test_bad_yaml_reports_its_line(tmp_path: Path) -> None:
    path = _broken(tmp_path, "version: 1.1.0", "version: [1.1.0")
    with pytest.raises(PersonaError, match="not valid YAML") as caught:
        load_persona_file(path)
    assert caught.value.line > 1


def test_cross_file_rules() -> None:
    main = load_persona_file(MAIN)
    others = [p for n, p in persona_library().personas.items() if n != main.name]
    with pytest.raises(PersonaError, match="also used by"):
        validate_library([main, main], agent_tool_names())
    lonely = [main, *[p for p in others if p.name != "security-auditor"]]
    with pytest.raises(PersonaError, match="'security-auditor' has no persona file"):
        validate_library(lonely, agent_tool_names())
    bad_tools = main.model_copy(update={"tools": ["load_test", "teleport"]})
    with pytest.raises(PersonaError, match="unknown tools"):
        validate_library([bad_tools, *others], agent_tool_names())
