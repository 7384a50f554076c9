"""Prompt data shipped with perfagent: personas, Jinja2 templates and playbooks.

This package holds data, not logic: it only says where the files are and
renders templates. It knows nothing of ``agent``. Shipping it as a package
means ``pip install .`` (not only ``-e``) finds the files.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2 import Environment

_ROOT = Path(__file__).resolve().parent


def personas_dir() -> Path:
    return _ROOT / "personas"


def templates_dir() -> Path:
    return _ROOT / "templates"


def knowledge_dir() -> Path:
    return _ROOT / "knowledge"


@cache
def environment() -> Environment:
    """The Jinja2 environment over ``templates/``, built once per process.

    Undefined variables raise, so a template never renders a silent blank
    where a measured number should be.
    """
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(templates_dir()),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown for models and terminals, not HTML
    )
    env.filters["num"] = format_number
    return env


def render(template: str, **values: Any) -> str:
    """Render ``templates/<template>`` with ``values``."""
    return environment().get_template(template).render(**values)


def format_number(value: float, digits: int = 1) -> str:
    """Readable numbers: 1234.5 -> '1,234.5', 12.0 -> '12', 0.0523 -> '0.052'."""
    if float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.{digits}f}"
    return f"{value:.3g}"
