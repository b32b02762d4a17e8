"""The scenarios shipped with mgwsim, found by name wherever mgwsim is installed.

``mgwsim run quickstart`` runs the installed copy of ``scenarios/quickstart.toml`` when no file
of that name is at hand (a path that exists always wins), so the README's first command works
after ``pip install`` outside the repository too.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path


def shipped_names() -> list[str]:
    """The names of the shipped scenarios (``quickstart``, ``load-100k``, …), sorted."""
    folder = resources.files("mgwsim_scenarios")
    return sorted(item.name.removesuffix(".toml") for item in folder.iterdir() if item.name.endswith(".toml"))


def names_shipped_scenario(argument: Path) -> bool:
    """Whether ``argument`` is read as a shipped scenario's name: a bare name, and no file of that name here."""
    return not argument.exists() and len(argument.parts) == 1


def shipped_path(argument: Path) -> Path | None:
    """The installed file of a shipped scenario named by ``argument`` (``quickstart`` or ``quickstart.toml``).

    ``None`` when ``argument`` names a file that exists, has a folder in it, or is not a shipped name.
    """
    if not names_shipped_scenario(argument):
        return None
    name = argument.name.removesuffix(".toml")
    if name not in shipped_names():
        return None
    return Path(str(resources.files("mgwsim_scenarios").joinpath(f"{name}.toml")))


def shipped_summary(name: str) -> str:
    """The first sentence of a shipped scenario's opening comment (what it shows), or ``""``."""
    text = resources.files("mgwsim_scenarios").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    words: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#") or not line.lstrip("#").strip():
            break
        words.append(line.lstrip("#").strip())
    sentence = " ".join(words)
    end = re.search(r"(?<!Art)\.(\s|$)", sentence)  # "Art. 39" does not end a sentence
    return sentence[: end.start() + 1] if end else sentence
