"""One TOML validation layer for every file mgwsim reads: scenarios, tariffs, dispute expectations.

A :class:`TomlTable` is a view of one decoded table that reads typed values, records which keys
were read (so a misspelt key is refused rather than silently defaulted) and names, on every error,
the file, the line of the key itself and its dotted name, in one format::

    scenario.toml:12: key 'fleets[1].count': must be > 0

Each caller passes its own exception type (``ScenarioError``, ``TariffError``), so errors keep
their meaning while sharing their form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any


def parse_toml(text: str, source: str, failure: Callable[[str], Exception]) -> dict[str, Any]:
    """The decoded document of ``text``, the file ``source``.

    Raises:
        Exception: ``failure("source:line: not valid TOML (reason)")`` for text that is not TOML.
    """
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # (Python 3.11's has no line attribute: its message names it)
        match = re.search(r"line (\d+)", str(exc))
        raise failure(f"{source}:{match.group(1) if match else 1}: not valid TOML ({exc})") from None


class TomlTable:
    """Typed, line-aware access to one TOML table: ``file:line: key 'name': reason`` on every error."""

    def __init__(
        self,
        source: str,
        lines: Sequence[str],
        path: tuple[str | int, ...],
        data: Any,
        failure: Callable[[str], Exception],
        headers: dict[str, tuple[list[int], int | None]] | None = None,
    ) -> None:
        """A view of ``data``, the table at ``path`` of the file ``source`` whose text is ``lines``.

        Args:
            source: The file's name, as errors show it.
            lines: The file's lines (to find a key's line); empty when the table has no text.
            path: Keys (and array positions) from the document's top to this table.
            data: The decoded table.
            failure: Builds the caller's exception from the one-line message.
            headers: The index of the file's header lines, shared by the tables of one file
                (the sub-tables get their parent's); a new one when not given.

        Raises:
            Exception: ``failure(...)``, if ``data`` is not a table.
        """
        self.source, self.lines, self.path, self.failure = source, lines, path, failure
        if not isinstance(data, dict):
            raise self.error(None, "must be a table")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()
        self._headers = {} if headers is None else headers
        """Header pattern → the positions of the lines it matches, and the first that is no ``[[`` header
        (a scenario of thousands of operations asks for each one's line)."""

    def name(self, key: str | None) -> str:
        """The dotted name of ``key`` in this table (``fleets[2].count``)."""
        text = ""
        for part in self.path + ((key,) if key else ()):
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text

    def line_of(self, key: str | None) -> int:
        """The line of the key in the file (found by scanning headers and assignments)."""
        parts = [part for part in self.path if isinstance(part, str)]
        index = next((part for part in self.path if isinstance(part, int)), 0)
        number = 0
        for length in range(len(parts), 0, -1):  # the innermost table that has a header of its own
            dotted = r"\s*\.\s*".join(rf"\"?{re.escape(part)}\"?" for part in parts[:length])
            matches, single = self._header_lines(rf"^\s*\[\[?\s*{dotted}\s*\]\]?")
            # the first header in the file that is the index-th of its array, or a table's own
            indexed = matches[index] if index < len(matches) else None
            found = [position for position in (indexed, single) if position is not None]
            if found:
                number = min(found) + 1
                break
        if not number and parts and key is None:  # an inline table or array: the line that assigns it
            assignment = re.compile(rf"^\s*\"?{re.escape(parts[-1])}\"?\s*=")
            number = next((position + 1 for position, line in enumerate(self.lines) if assignment.match(line)), 0)
        if key:
            assignment = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
            for position in range(number, len(self.lines)):
                text = self.lines[position]
                if position > number and text.strip().startswith("["):
                    break
                if assignment.match(text):
                    return position + 1
        return max(number, 1)

    def _header_lines(self, pattern: str) -> tuple[list[int], int | None]:
        """The positions of the lines ``pattern`` matches, and the first of them that is no ``[[`` header."""
        if pattern not in self._headers:
            compiled = re.compile(pattern)
            matches = [position for position, line in enumerate(self.lines) if compiled.match(line)]
            single = next((position for position in matches if not self.lines[position].strip().startswith("[[")), None)
            self._headers[pattern] = (matches, single)
        return self._headers[pattern]

    def error(self, key: str | None, reason: str) -> Exception:
        """The caller's exception: ``file:line: key 'name': reason``."""
        where = f"{self.source}:{self.line_of(key)}"
        return self.failure(f"{where}: key '{self.name(key)}': {reason}" if key or self.path else f"{where}: {reason}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, check: Any = None) -> Any:
        """The value of ``key``, of type ``kind`` (``default`` when absent; required without one).

        ``check`` returns the reason a value is refused, or ``None``.
        """
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind is int:
            raise self.error(key, "must be an integer")
        if not isinstance(value, kind):
            words = {bool: "true or false", int: "an integer", str: "a string", list: "a list", dict: "a table"}
            kinds = kind if isinstance(kind, tuple) else (kind,)
            raise self.error(key, "must be " + " or ".join(words.get(k, k.__name__) for k in kinds))
        if check is not None:
            reason = check(value)
            if reason:
                raise self.error(key, reason)
        return value

    def table(self, key: str, index: int | None = None, value: Any = None, *, required: bool = False) -> TomlTable:
        """The sub-table ``key`` (element ``index`` of an array of tables: its ``value``); empty when absent."""
        self.used.add(key)
        if required and key not in self.data:
            raise self.error(key, "is required")
        path = self.path + ((key,) if index is None else (key, index))
        found = self.data.get(key, {}) if value is None else value
        return TomlTable(self.source, self.lines, path, found, self.failure, self._headers)

    def raw(self, key: str, default: Any = ...) -> Any:
        """The value of ``key`` as decoded (``default`` when absent; required without one)."""
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.error(key, "is required")
            return default
        return self.data[key]

    def money(self, key: str, default: Any = ...) -> Decimal:
        """An amount of money: a decimal string or an integer, never a float; 0 to 10^12, 8 places."""
        value = self.raw(key, default)
        if isinstance(value, float):
            raise self.error(key, f'write money as a string like "{value}", not a float')
        if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
            raise self.error(key, "must be a decimal string or an integer")
        try:
            amount = Decimal(value)
        except InvalidOperation:
            raise self.error(key, f"{str(value)[:40]!r} is not a decimal number") from None
        if not amount.is_finite():
            raise self.error(key, "must be a finite number")
        if amount < 0:
            raise self.error(key, "must not be negative")
        if amount.as_tuple().exponent < -8:  # type: ignore[operator]
            raise self.error(key, "has more than 8 decimal places")
        if amount > Decimal("1e12"):
            raise self.error(key, "is larger than 10^12")
        return amount

    def integer(self, key: str, default: Any = ..., minimum: int = 0) -> int:
        """An integer from ``minimum`` to 2^62."""
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, "must be an integer")
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}")
        if value > 2**62:
            raise self.error(key, "is too large")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> str:
        """One of ``choices``."""
        value = self.raw(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}")
        return str(value)

    def boolean(self, key: str, default: Any = ...) -> bool:
        """``true`` or ``false``."""
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def text(self, key: str, default: Any = ...) -> str:
        """A non-empty string."""
        value = self.raw(key, default)
        if not isinstance(value, str) or not value:
            raise self.error(key, "must be a non-empty string")
        return value

    def finish(self) -> None:
        """Refuse the keys nothing read (a misspelt key is an error, not a default)."""
        for key in self.data:
            if key not in self.used:
                raise self.error(key, "unknown key")
