"""CI installs the versions last tested together: `.ci/constraints.txt` pins every requirement of mgwsim.

A release of DuckDB, Ray or pyarrow in the registry can change results, figures or error texts.
`.ci/run` therefore installs with the constraints file; these tests keep that file whole (each
requirement of ``pyproject.toml``, extras included, pinned to one version inside its range) and,
under `.ci/run`, check that the environment the tests run in is the pinned one.
"""

from __future__ import annotations

import os
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"


def _pins(text: str) -> dict[str, Version]:
    """Each ``name==version`` line of a constraints file, by canonical name (comments skipped)."""
    pins: dict[str, Version] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"line {number}: {raw!r} is not name==version"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"line {number}: {requirement.name} pinned twice"
        pins[name] = Version(specifiers[0].version)
    return pins


def _requirements() -> list[Requirement]:
    """mgwsim's requirements: its dependencies, those of every extra, and its build's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = list(project["project"]["dependencies"])
    for extra in project["project"]["optional-dependencies"].values():
        listed.extend(extra)
    listed.extend(project["build-system"]["requires"])
    return [Requirement(text) for text in listed]


def test_every_requirement_is_pinned_inside_its_range() -> None:
    pins = _pins(CONSTRAINTS.read_text(encoding="utf-8"))
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in .ci/constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"


def test_a_pin_outside_its_range_or_missing_is_caught() -> None:
    pins = _pins("duckdb==1.0.0\n# a comment\nrich==15.0.0  # trailing comment\n")
    assert pins == {"duckdb": Version("1.0.0"), "rich": Version("15.0.0")}
    duckdb = next(r for r in _requirements() if canonicalize_name(r.name) == "duckdb")
    assert not duckdb.specifier.contains(pins["duckdb"])
    with pytest.raises(AssertionError, match="not name==version"):
        _pins("duckdb>=2\n")


def test_ci_runs_the_pinned_versions() -> None:
    if os.environ.get("MGWSIM_PINNED") != "1":
        pytest.skip("the environment was not installed from .ci/constraints.txt (.ci/run sets MGWSIM_PINNED=1)")
    pins = _pins(CONSTRAINTS.read_text(encoding="utf-8"))
    installed: dict[str, Version] = {
        canonicalize_name(dist.metadata["Name"]): Version(dist.version) for dist in metadata.distributions()
    }
    for name, version in pins.items():
        if name == "setuptools":  # the build's: pip installs it in its isolated build environment only
            continue
        assert installed.get(name) == version, f"{name}: installed {installed.get(name)}, pinned {version}"
