"""Columnar ingest of JSONL event logs: parsed and checked by DuckDB, exactly as the row reader checks them.

A JSONL log is read in chunks of whole lines. Each chunk becomes one Arrow string column without
a copy (the line offsets are found with numpy), and DuckDB parses every line's JSON, converts it
into the store's columns and checks it with :data:`metering.parquet_ingest.VALID_SQL` — the rules
of :func:`metering.events.event_from_mapping` — on every core.

DuckDB's JSON reader is more lenient than the event format (it takes ``NaN``, trailing commas and
repeated keys) and a few events need Python anyway (diagnostic events with their extra fields, an
event without an id whose id is its content hash). So a line is taken by the columnar path only
when it is *plain*: a JSON object of a billed type whose keys are that type's fields, each once,
each value of the JSON type the field needs, with an instant of :data:`~metering.timeutil.STRICT_INSTANT_PATTERN`.
Every other line — rare in a real log — is read by the row reader's own line decoder
(:func:`metering.eventlog.decode_line`), which accepts it or names the reason. A plain line that
fails the checks is decoded there too, so the message is the row reader's, word for word, and the
first bad line of the file is the one reported.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from metering.eventlog import EventLogError, decode_line
from metering.events import BILLED_TYPES, COMMON_FIELDS, EVENT_COLUMNS, FIELD_SPECS
from metering.parquet_ingest import VALID_SQL
from metering.store import rollback_open, staging_table
from metering.timeutil import instant_sql

LOG: Final = logging.getLogger(__name__)
"""Progress of long logs at INFO (``mgwsim -v``), one line per chunk."""
CHUNK_BYTES: Final = 64 << 20
"""About how much of the log is read, parsed and checked at once (whole lines)."""
_WHITESPACE: Final = " \t\r\n\x0b\x0c"
"""What ``bytes.strip`` removes: a line of only these is skipped, as the row reader skips it."""
_SPACE_BYTES: Final = np.frombuffer(_WHITESPACE.encode(), dtype=np.uint8)
_STRING_KINDS: Final = frozenset({"iccid", "name", "option", "route", "sms_kind", "instant"})
_INTEGER_KINDS: Final = frozenset({"count", "positive"})
JSON_FIELDS: Final = (*COMMON_FIELDS, *EVENT_COLUMNS)
"""Every field the event format knows, in the order of :data:`JSON_STRUCTURE`."""


def _field_kinds() -> dict[str, str]:
    """Each field's JSON kind: ``string``, ``integer`` or ``boolean`` (one kind per name, checked)."""
    kinds = {name: "string" for name in COMMON_FIELDS}
    for specs in FIELD_SPECS.values():
        for name, spec in specs.items():
            kind = "string" if spec.kind in _STRING_KINDS else "integer" if spec.kind in _INTEGER_KINDS else "boolean"
            if kinds.setdefault(name, kind) != kind:
                raise AssertionError(f"field {name!r} has two JSON kinds")
    return kinds


_KINDS: Final = _field_kinds()
JSON_STRUCTURE: Final = "{" + ", ".join(f'"{name}": "JSON"' for name in JSON_FIELDS) + "}"
"""``json_transform``'s structure: every field the event format knows, as its JSON text."""


def _string_sql(value: str) -> str:
    """The string a JSON value's text holds (NULL unless it is a string); escapes only through DuckDB's parser."""
    return (
        f"CASE WHEN starts_with({value}, '\"') THEN (CASE WHEN contains({value}, '\\') THEN {value} ->> '$' "
        f"ELSE substr({value}, 2, length({value}) - 2) END) END"
    )


def _integer_sql(value: str) -> str:
    """The integer a JSON value's text holds (NULL unless it is an integer within 64 bits).

    DuckDB's cast would also read ``1.0``, ``1e3`` and ``0x10``; a JSON integer has none of ``.eE``
    (the hexadecimal form cannot come out of the JSON parser).
    """
    return (
        f"CASE WHEN NOT (contains({value}, '.') OR contains({value}, 'e') OR contains({value}, 'E')) "
        f"THEN TRY_CAST({value} AS BIGINT) END"
    )


def _chunk_sql(careful: bool) -> str:
    """``SELECT`` over the registered chunk ``jsonl_chunk(line, text, closed)``: the events it takes.

    One row, with ``line`` and the store's event columns, for each line that is *plain* (may be
    taken here, see the module) and passes :data:`~metering.parquet_ingest.VALID_SQL`; every other
    line is left out, for the row reader. With ``careful``, lines that are not JSON at all are left
    out too instead of failing the statement (slower: DuckDB parses them twice).
    """
    guard = "json_valid(text)" if careful else "true"
    unpacked = ", ".join(f"v.{name}::VARCHAR AS j_{name}" for name in JSON_FIELDS)
    columns = []
    for name in ("type", "account", "id", *EVENT_COLUMNS):
        if name == "expires":
            continue
        kind = _KINDS[name]
        value = f"j_{name}"
        if kind == "string":
            columns.append(f"{_string_sql(value)} AS {name}")
        elif kind == "integer":
            columns.append(f"{_integer_sql(value)} AS {name}")
        else:
            columns.append(f"CASE {value} WHEN 'true' THEN true WHEN 'false' THEN false END AS {name}")
    for name in ("ts", "expires"):
        text = "(" + _string_sql(f"j_{name}") + ")"
        columns.append(f"{instant_sql(text)} AS {name}")
    # a field that is present (even as null) must be of its kind; a value NULL after conversion
    # while its text is not 'null' is of the wrong kind (or an integer beyond 64 bits)
    typed = " AND ".join(
        f"(j_{name} IS NULL OR j_{name} = 'null' OR {name} IS NOT NULL)" for name in ("account", *EVENT_COLUMNS)
    )
    present = " + ".join(f"(j_{name} IS NOT NULL)::INTEGER" for name in JSON_FIELDS)
    outside = " ".join(
        f"WHEN '{event_type}' THEN " + " AND ".join(f"j_{name} IS NULL" for name in EVENT_COLUMNS if name not in specs)
        for event_type, specs in FIELD_SPECS.items()
    )
    plain = (
        f"type IN ({', '.join(repr(name) for name in BILLED_TYPES)}) AND id IS NOT NULL AND ts IS NOT NULL "
        f"AND closed AND key_count = {present} AND (CASE type {outside} END) AND {typed}"
    )
    counted = " ".join(f"WHEN '{event_type}' THEN coalesce(count, 1)" for event_type in ("sms.sent", "mono.message"))
    stored = ", ".join(("ts", "type", "account", "id", *EVENT_COLUMNS))
    raw = ", ".join(f"j_{name}" for name in JSON_FIELDS)
    return f"""
WITH parsed AS (
    SELECT line, closed, CASE WHEN {guard} THEN len(json_keys(text)) END AS key_count,
        CASE WHEN {guard} THEN json_transform(text, '{JSON_STRUCTURE}') END AS v
    FROM jsonl_chunk
), fields AS (
    SELECT line, closed, key_count, {unpacked} FROM parsed
), converted AS (
    SELECT * EXCLUDE (count), CASE type {counted} ELSE count END AS count
    FROM (SELECT line, closed, key_count, {raw}, {", ".join(columns)} FROM fields)
), flagged AS (
    SELECT line, {stored}, coalesce({plain}, false) AS plain FROM converted
)
SELECT line, {stored} FROM flagged WHERE plain AND coalesce({VALID_SQL}, false)
"""


FAST_SQL: Final = _chunk_sql(careful=False)
CAREFUL_SQL: Final = _chunk_sql(careful=True)
SCAN_BATCHES: Final = 16
"""Record batches a chunk is cut into: DuckDB scans one batch per thread at a time."""


class _Damaged(Exception):
    """The compressed stream broke (:func:`_damage_error` finds the row reader's line and words)."""


@dataclass(frozen=True)
class Chunk:
    """Whole lines of a log: their bytes, where each starts, and the number of the first.

    ``data`` is a view of one of the reader's two buffers: valid while the next chunk is read,
    until the one after it is asked for.
    """

    data: memoryview
    starts: np.ndarray
    first_line: int

    @property
    def lines(self) -> int:
        """How many lines the chunk holds."""
        return len(self.starts) - 1

    def raw(self, line: int) -> bytes:
        """The bytes of line ``line`` (a file line number), its newline included."""
        index = line - self.first_line
        return bytes(self.data[int(self.starts[index]) : int(self.starts[index + 1])])

    def table(self) -> pa.Table:
        """The chunk's lines that are not blank, for :data:`FAST_SQL`: ``line``, ``text`` and ``closed``.

        ``text`` shares the chunk's bytes (each line with its newline), in :data:`SCAN_BATCHES`
        record batches, so DuckDB parses them on every core. ``closed`` says, found with
        numpy, that the line starts with ``{`` and ends with ``}`` right after a character that is
        neither a comma nor a space: the only way DuckDB's parser, which takes a trailing comma,
        and Python's, which does not, could differ on a line of scalar fields.
        """
        data = np.frombuffer(self.data, dtype=np.uint8)
        starts, ends = self.starts[:-1], self.starts[1:]
        last = ends - 1 - (data[ends - 1] == 0x0A)
        last = last - ((data[np.maximum(last, starts)] == 0x0D) & (last > starts))
        before = np.maximum(last - 1, starts)
        closed = (
            (last - starts >= 1)
            & (data[starts] == ord("{"))
            & (data[np.maximum(last, starts)] == ord("}"))
            & (data[before] != ord(","))
            & ~np.isin(data[before], _SPACE_BYTES)
        )
        lines = np.arange(self.first_line, self.first_line + self.lines, dtype=np.int64)
        offsets = self.starts.astype(np.int64)
        texts = pa.LargeStringArray.from_buffers(self.lines, pa.py_buffer(offsets.tobytes()), pa.py_buffer(self.data))
        table = pa.table({"line": lines, "text": texts, "closed": closed})
        odd = np.flatnonzero(data[starts] != ord("{"))
        blank = [index for index in odd if not self.raw(self.first_line + int(index)).strip()]
        if blank:
            keep = np.ones(self.lines, dtype=bool)
            keep[blank] = False
            table = table.filter(pa.array(keep))
        batches = table.to_batches(max_chunksize=max(1, -(-table.num_rows // SCAN_BATCHES)))
        return pa.Table.from_batches(batches, schema=table.schema)

    def is_text(self) -> bool:
        """Whether the chunk is UTF-8 throughout (a chunk that is not goes line by line to the row reader)."""
        if not len(self.data) or int(np.frombuffer(self.data, dtype=np.uint8).max()) < 0x80:
            return True
        try:
            str(self.data, "utf-8")
        except UnicodeDecodeError:
            return False
        return True


def line_chunks(path: Path, compressed: bool, size: int = CHUNK_BYTES) -> Generator[Chunk, None, None]:
    """The file's lines in chunks of about ``size`` bytes, each cut after a newline.

    Two buffers are read into in turn (a line longer than ``size`` grows them), so the bytes are
    copied once, from the file into a buffer, no fresh memory is touched, and a chunk stays
    valid while the next one is read: until the one after that is asked for.

    Raises:
        _Damaged: When a compressed stream is damaged or truncated.
    """
    opener = gzip.open if compressed else open
    first_line = 1
    buffers = [bytearray(size), bytearray(size)]
    newlines = np.empty(size, dtype=bool)
    turn = 0
    kept = 0  # bytes of an unfinished line, at the start of buffers[turn]
    try:
        with opener(path, "rb") as stream:
            while True:
                buffer = buffers[turn]
                if kept == len(buffer):  # one line fills the buffer: a larger one (views may still see this)
                    larger = bytearray(2 * len(buffer))
                    larger[:kept] = buffer[:kept]
                    buffer = buffers[turn] = larger
                    newlines = np.empty(len(buffer), dtype=bool)
                with memoryview(buffer) as whole:
                    read = stream.readinto(whole[kept:])
                filled = kept + read
                if not read:
                    if kept:
                        yield _chunk(memoryview(buffer)[:kept], first_line, newlines)
                    return
                cut = buffer.rfind(b"\n", kept, filled) + 1
                if not cut:
                    kept = filled
                    continue
                chunk = _chunk(memoryview(buffer)[:cut], first_line, newlines)
                first_line += chunk.lines
                yield chunk
                # the caller is done with the chunk before this one: its buffer takes the unfinished line
                turn, kept = 1 - turn, filled - cut
                if len(buffers[turn]) < len(buffer):
                    buffers[turn] = bytearray(len(buffer))
                buffers[turn][:kept] = buffer[cut:filled]
    except (EOFError, gzip.BadGzipFile, zlib.error):
        raise _Damaged from None


@dataclass(frozen=True)
class Prepared:
    """A chunk with what :func:`_ingest_chunk` needs of it, found while the previous chunk was checked."""

    chunk: Chunk
    table: pa.Table | None
    """:meth:`Chunk.table` of a chunk of UTF-8 text; ``None`` for one that is not (:meth:`Chunk.is_text`)."""


def _prepare(chunk: Chunk) -> Prepared:
    return Prepared(chunk, chunk.table() if chunk.is_text() else None)


def prepared_chunks(path: Path, compressed: bool, size: int = CHUNK_BYTES) -> Iterator[Prepared]:
    """:func:`line_chunks`, each one read and prepared on a thread while the caller checks the one before.

    Reading the file, finding its lines and building the Arrow table are single-threaded; DuckDB,
    checking the previous chunk on every core, is not always busy on all of them. One chunk ahead
    at most, so the two buffers of :func:`line_chunks` suffice: the next chunk is asked for only
    when the caller asks for the current one's successor, so it is done with the one before.

    Raises:
        _Damaged: When a compressed stream is damaged or truncated (raised where the caller reads it).
    """

    def following() -> Prepared | None:
        chunk = next(chunks, None)
        return None if chunk is None else _prepare(chunk)

    # the reader stops (a chunk it is reading is finished) before the file is closed
    with closing(line_chunks(path, compressed, size)) as chunks, ThreadPoolExecutor(1, "jsonl-reader") as reader:
        ahead = reader.submit(following)
        try:
            while (prepared := ahead.result()) is not None:
                ahead = reader.submit(following)
                yield prepared
        finally:
            ahead.cancel()  # not started yet: a caller that stopped early needs no more


def _chunk(data: memoryview, first_line: int, newlines: np.ndarray) -> Chunk:
    """The chunk of ``data``; ``newlines`` is a reused scratch array at least as long."""
    found = newlines[: len(data)]
    np.equal(np.frombuffer(data, dtype=np.uint8), 0x0A, out=found)
    ends = np.flatnonzero(found) + 1
    if not len(ends) or ends[-1] != len(data):
        ends = np.append(ends, len(data))
    return Chunk(data, np.concatenate(([0], ends)), first_line)


def _damage_error(path: Path, done: int) -> EventLogError:
    """The row reader's error for a damaged compressed log, after the chunks up to line ``done`` passed.

    The row reader hands out lines one by one until the stream breaks; the lines it would still
    have read after the last whole chunk are decoded here, as it decodes them, and the damage is
    named at the line after them.
    """
    number = 0
    try:
        with gzip.open(path, "rb") as stream:
            for number, raw in enumerate(stream, start=1):
                if number > done:
                    decode_line(raw, path, number)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        return EventLogError(f"{path}:{number + 1}: compressed stream is damaged or truncated ({exc})")
    return EventLogError(f"{path}:{number + 1}: compressed stream is damaged or truncated")


class RefusedByParser(Exception):
    """DuckDB's JSON parser refused a line of the chunk starting at ``first_line``: see :func:`in_one_transaction`."""

    def __init__(self, first_line: int) -> None:
        """Name the chunk by its first line."""
        super().__init__(first_line)
        self.first_line = first_line


Result = TypeVar("Result")


def in_one_transaction(connection: duckdb.DuckDBPyConnection, work: Callable[[int | None], Result]) -> Result:
    """Run ``work`` in one transaction and commit it; ``work(careful_from)`` reads logs with :func:`ingest_jsonl`.

    A line DuckDB's parser refuses (a line that is not JSON at all, a byte order mark) fails its
    statement, and DuckDB then aborts the whole transaction: nothing more can run in it. So it is
    rolled back and ``work`` runs again from the start, with ``careful_from`` the first line of the
    chunk that failed: from that chunk on, lines are parsed with :data:`CAREFUL_SQL`, which leaves
    such a line to the row reader. The chunks before it passed once, so they pass again: a log is
    read at most twice, and the usual log once.

    Raises:
        Exception: Whatever ``work`` raises otherwise, after the transaction is rolled back.
    """
    careful_from: int | None = None
    while True:
        connection.begin()
        try:
            result = work(careful_from)
            connection.commit()
        except RefusedByParser as refused:
            rollback_open(connection)
            careful_from = refused.first_line
            continue
        except BaseException:
            rollback_open(connection)
            raise
        return result


def ingest_jsonl(
    connection: duckdb.DuckDBPyConnection,
    path: Path,
    compressed: bool,
    first_seq: int,
    table: str,
    chunk_bytes: int = CHUNK_BYTES,
    careful_from: int | None = None,
) -> int:
    """Read a JSONL log into ``table`` (the store's columns); return how many events were added.

    An event's ``seq`` is ``first_seq + line - 1``, so the file's order is kept. Nothing is checked
    against events already stored: the caller settles repeated ids (see
    :meth:`metering.store.EventStore.settle_duplicates` and :func:`metering.parquet_ingest.append_checked`).
    Call it inside :func:`in_one_transaction`, which gives ``careful_from``.

    Raises:
        EventLogError: For the first bad line of the file, with the row reader's message.
        RefusedByParser: When DuckDB's parser refused a line of a chunk before ``careful_from``.
    """
    source = str(path)
    literal = source.replace("'", "''")
    stored = ", ".join(("ts", "type", "account", "id", *EVENT_COLUMNS))
    added = 0
    done = 0
    try:
        for prepared in prepared_chunks(path, compressed, chunk_bytes):
            chunk = prepared.chunk
            careful = careful_from is not None and chunk.first_line >= careful_from
            added += _ingest_chunk(connection, prepared, path, first_seq - 1, table, literal, stored, careful)
            done = chunk.first_line + chunk.lines - 1
            LOG.info("%s: %s events read into the store (to line %s)", path, f"{added:,}", f"{done:,}")
    except _Damaged:
        raise _damage_error(path, done) from None
    return added


def _ingest_chunk(
    connection: duckdb.DuckDBPyConnection,
    prepared: Prepared,
    path: Path,
    seq_base: int,
    table: str,
    literal: str,
    stored: str,
    careful: bool,
) -> int:
    """Check one chunk and add its events to ``table``; return how many.

    Raises:
        RefusedByParser: When DuckDB's parser refused a line and the chunk was not read ``careful``.
    """
    chunk, lines = prepared.chunk, prepared.table
    if lines is None:
        return _decode_lines(
            connection, chunk, range(chunk.first_line, chunk.first_line + chunk.lines), path, seq_base, table
        )
    insert = f"INSERT INTO {table} SELECT {seq_base} + line, {stored}, NULL, '{literal}', line FROM "
    connection.register("jsonl_chunk", lines)
    try:
        taken = connection.execute(f"{insert}({CAREFUL_SQL if careful else FAST_SQL})").fetchall()[0][0]
    except duckdb.InvalidInputException:  # a line that is not JSON at all: DuckDB aborted the transaction
        if careful:
            raise
        raise RefusedByParser(chunk.first_line) from None
    finally:  # in an aborted transaction this fails too: the failure that led here is the one to report
        with suppress(duckdb.Error):
            connection.unregister("jsonl_chunk")
    if taken == lines.num_rows:  # the usual case: every line was plain and valid
        return int(taken)
    # the lines left out, in order: the row reader takes them or names the first bad one
    first_seq, last_seq = seq_base + chunk.first_line, seq_base + chunk.first_line + chunk.lines - 1
    inserted = connection.execute(f"SELECT line FROM {table} WHERE seq BETWEEN {first_seq} AND {last_seq}")
    left = np.setdiff1d(lines.column("line").to_numpy(), inserted.fetchnumpy()["line"])
    return int(taken) + _decode_lines(connection, chunk, left.tolist(), path, seq_base, table)


def _decode_lines(
    connection: duckdb.DuckDBPyConnection,
    chunk: Chunk,
    lines: range | list[int],
    path: Path,
    seq_base: int,
    table: str,
) -> int:
    """Read these lines with the row reader's decoder into ``table``; return how many events."""
    events = [event for line in lines if (event := decode_line(chunk.raw(line), path, line)) is not None]
    if not events:
        return 0
    connection.register("jsonl_decoded", staging_table(events, [seq_base + event.line for event in events]))
    try:
        connection.execute(f"INSERT INTO {table} SELECT * FROM jsonl_decoded")
    finally:
        connection.unregister("jsonl_decoded")
    return len(events)
