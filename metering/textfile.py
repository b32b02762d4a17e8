"""Reading a user's text file with a one-line reason when it cannot be read."""

from __future__ import annotations

from pathlib import Path


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``.

    Raises:
        ValueError: With one line, ``path: reason`` (no such file, not UTF-8, cannot read).
    """
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror})") from None
