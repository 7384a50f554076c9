"""``pip install .`` (not only ``-e``) ships the prompts and examples the runtime needs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_wheel_installs_and_finds_its_data(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(tmp_path / "dist"), str(REPO)], check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("perfagent-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("prompts/personas/performance-engineer.md",
                     "prompts/templates/system.md.j2", "prompts/templates/offline_answer.md.j2",
                     "prompts/knowledge/n-plus-one-queries.md", "examples/slow_service.py",
                     "agent/cli.py", "tools/loadtest.py", "agent/knowledge/vocab/all-MiniLM-L6-v2-vocab.txt"):
        assert expected in names, expected
    assert not any(n.startswith("tests/") for n in names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    # Run from an unrelated folder with the installed copy first on the path:
    # the personas and templates must come from the wheel, not the checkout.
    probe = ("import prompts, agent.persona as p; "
             "lib = p.persona_library(); "
             "print(prompts.__file__); print(len(lib.personas)); "
             "print(prompts.render('system.md.j2', persona=lib.get('performance-engineer'))[:40])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    location, count, prompt = done.stdout.splitlines()[:3]
    assert location.startswith(str(target))
    assert count == "6"
    assert prompt.startswith("You are the **performance-engineer**")
