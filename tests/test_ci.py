"""CI runs the README's test command, strictly: a missing service fails rather than skips."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pytest_args(command: str) -> list[str]:
    """The arguments after ``python -m pytest`` in a shell command line."""
    words = shlex.split(command)
    at = next(i for i in range(len(words) - 1) if words[i : i + 2] == ["-m", "pytest"])
    return words[at + 2 :]


def test_ci_runs_the_readme_test_command_with_services_required():
    readme = (ROOT / "README.md").read_text()
    (readme_line,) = re.findall(r"^python3 -m venv .*-m pytest.*$", readme, flags=re.MULTILINE)
    ci = (ROOT / ".ci" / "run").read_text()
    (ci_line,) = re.findall(r"^exec .*-m pytest.*$", ci, flags=re.MULTILINE)
    readme_args = pytest_args(readme_line.split("&&")[-1])
    assert pytest_args(ci_line) == readme_args
    assert any(a.startswith("-r") and "s" in a for a in readme_args), "skips are listed"
    assert re.search(r"^export GALMET_REQUIRE_SERVICES=1$", ci, flags=re.MULTILINE)
    assert "GALMET_REQUIRE_SERVICES=1" in readme
