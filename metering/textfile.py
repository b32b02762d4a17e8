"""Reading a user's text files: one-line reasons when one cannot be read, and CSV header names as matched."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

_JAPANESE: Final = re.compile("[\u3040-\u30ff\u4e00-\u9fff]")
"""Kana and common kanji: what a Japanese text holds and bytes that merely decode do not, as a rule."""


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``, without the byte order mark some tools write first (Excel, Windows).

    Raises:
        ValueError: With one line, ``path: reason`` (no such file, a folder, not UTF-8).
        OSError: When the file exists but cannot be read (permissions, I/O): an I/O failure.
    """
    try:
        return path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}){_shift_jis_hint(path)}") from None


def _shift_jis_hint(path: Path) -> str:
    """A hint when the file reads as Shift_JIS, what Japanese Excel and Windows tools save "CSV" and text in."""
    try:
        text = path.read_bytes().decode("cp932")
    except (UnicodeDecodeError, OSError):
        return ""
    controls = any(ord(character) < 0x20 and character not in "\t\r\n" for character in text)
    if controls or not _JAPANESE.search(text):  # binary data decodes too, into other characters
        return ""
    return "; it reads as Shift_JIS: save it as UTF-8"


def header_names(cells: Sequence[str], needed: Sequence[str]) -> list[str]:
    """A CSV header's column names as they are matched: trimmed and lower-cased (``IMSI``, `` iccid``).

    Raises:
        ValueError: ``column NAME twice``, when one of the ``needed`` names is given twice.
    """
    names = [cell.strip().lower() for cell in cells]
    twice = next((name for index, name in enumerate(names) if name in needed and name in names[:index]), None)
    if twice is not None:
        raise ValueError(f"column {twice} twice")
    return names
