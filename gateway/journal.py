"""The write-ahead journal of ``mgwsim meter-mqtt``: no message the broker handed over is lost.

A message at QoS 1 is the broker's until the subscriber acknowledges it. The meter acknowledges a
message only after it is on disk: every accepted message is appended to the journal
(``OUT.journal.jsonl``, one ``mono.message`` event per line, the event log's own format) and every
refused one to the dead letters (``OUT.dead-letters.jsonl``, with the reason), and both are synced
(``fsync``) before the acknowledgements go out. A meter killed at any moment loses nothing: what it
acknowledged is in the journal, what it did not the broker delivers again to the same client id,
and the journal's ids drop those it already has. A rerun resumes the journal; at the end the journal
is compacted into ``OUT`` (atomically) and removed.

Dead letters name the topic, the size, the reason and a SHA-256 of the payload — never the payload
itself, which could hold anything a stray publisher sent (a PIN among it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from metering.eventlog import event_line
from metering.events import Event, decode_object, event_from_mapping

JOURNAL_SUFFIX: Final = ".journal.jsonl"
"""The journal is ``OUT`` with this suffix added."""
DEAD_LETTER_SUFFIX: Final = ".dead-letters.jsonl"
"""The dead letters are ``OUT`` with this suffix added."""


class JournalError(Exception):
    """A journal that cannot be resumed (one line naming the file and line)."""


def journal_path(out: Path) -> Path:
    """Where the journal of ``out`` is written."""
    return out.with_name(out.name + JOURNAL_SUFFIX)


def dead_letter_path(out: Path) -> Path:
    """Where the dead letters of ``out`` are written."""
    return out.with_name(out.name + DEAD_LETTER_SUFFIX)


def _complete_lines(path: Path) -> tuple[list[bytes], int]:
    """The whole lines of a file and the length they take (a torn last line is left out)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


@dataclass
class Journal:
    """The journal and dead letters of one output, opened for appending.

    Attributes:
        out: The final event log the journal is compacted into.
        events: Every event journaled so far (resumed ones first), in arrival order.
        resumed: How many events came from the journal of an earlier run.
        dead: Dead letters written, this run and before.
    """

    out: Path
    events: list[Event] = field(default_factory=list)
    resumed: int = 0
    dead: int = 0
    _lines: list[str] = field(default_factory=list)
    _letters: list[str] = field(default_factory=list)
    _stream: IO[str] | None = None
    _dead_stream: IO[str] | None = None

    @classmethod
    def open(cls, out: Path) -> Journal:
        """Open (and resume) the journal of ``out``.

        Raises:
            JournalError: For a journal line that is not a valid event.
            OSError: When the journal cannot be read or written.
        """
        journal = cls(out)
        path = journal_path(out)
        if path.exists():
            lines, end = _complete_lines(path)
            for number, raw in enumerate(lines, start=1):
                try:
                    record = decode_object(raw)
                except (ValueError, RecursionError):
                    raise JournalError(f"{path}:{number}: not a journal line (not JSON)") from None
                event = event_from_mapping(record, str(path), number) if isinstance(record, dict) else None
                if not isinstance(event, Event):
                    raise JournalError(f"{path}:{number}: not a journal line ({event})")
                journal.events.append(event)
            journal.resumed = len(journal.events)
            os.truncate(path, end)  # a line torn by a crash was never acknowledged: the broker sends it again
        dead = dead_letter_path(out)
        if dead.exists():
            lines, end = _complete_lines(dead)
            journal.dead = len(lines)
            os.truncate(dead, end)
        journal._stream = path.open("a", encoding="utf-8")
        journal._dead_stream = dead.open("a", encoding="utf-8")
        return journal

    def append(self, event: Event) -> None:
        """Journal an accepted message (written at the next :meth:`sync`)."""
        self.events.append(event)
        self._lines.append(event_line(event) + "\n")

    def refuse(self, topic: str, payload: bytes, reason: str, message_id: str | None) -> None:
        """Keep a refused message as a dead letter: where, how big, why — not its content."""
        letter: dict[str, Any] = {
            "received": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "topic": topic[:1024],
            "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "reason": reason,
        }
        if message_id is not None:
            letter["id"] = message_id[:1024]
        self._letters.append(json.dumps(letter, ensure_ascii=False) + "\n")
        self.dead += 1

    def sync(self) -> None:
        """Write what was taken since the last sync and make it durable (before acknowledging it).

        Raises:
            OSError: When the journal cannot be written (the messages stay unacknowledged).
        """
        for stream, pending in ((self._stream, self._lines), (self._dead_stream, self._letters)):
            if pending and stream is not None:
                stream.write("".join(pending))
                stream.flush()
                os.fsync(stream.fileno())
                pending.clear()

    def close(self) -> None:
        """Sync and close the files."""
        self.sync()
        for stream in (self._stream, self._dead_stream):
            if stream is not None:
                stream.close()
        self._stream = self._dead_stream = None

    def finish(self) -> None:
        """After the log is written: remove the journal (and an empty dead-letter file)."""
        self.close()
        journal_path(self.out).unlink(missing_ok=True)
        dead = dead_letter_path(self.out)
        if dead.exists() and dead.stat().st_size == 0:
            dead.unlink()
