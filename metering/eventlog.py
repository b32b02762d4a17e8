"""Reading and writing the event log: ``.jsonl``, ``.jsonl.gz`` and ``.parquet``.

Readers yield validated :class:`~metering.events.Event` records in file order and stop at the
first bad record with an :class:`EventLogError` that names the file and line (Parquet: the row,
1-based). Writers are atomic: they write a temporary file beside the target and rename it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from metering.atomic import AtomicWriter, open_write_behind
from metering.events import EVENT_COLUMNS, DuplicateKeyError, Event, EventError, decode_object, event_from_mapping
from metering.timeutil import INSTANT_RANGE, MAX_INSTANT, MIN_INSTANT, format_instant

SUFFIXES: Final = (".jsonl", ".jsonl.gz", ".parquet")

ARROW_SCHEMA: Final = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("type", pa.string()),
        ("account", pa.string()),
        ("id", pa.string()),
        ("sim", pa.string()),
        ("gateway", pa.string()),
        ("option", pa.string()),
        ("target", pa.string()),
        ("up_bytes", pa.int64()),
        ("down_bytes", pa.int64()),
        ("route", pa.string()),
        ("session", pa.string()),
        ("kind", pa.string()),
        ("count", pa.int64()),
        ("delivered", pa.bool_()),
        ("bytes", pa.int64()),
        ("points", pa.int64()),
        ("expires", pa.timestamp("us", tz="UTC")),
        ("extra", pa.string()),
    ]
)
"""The columnar form of the event log (Parquet files and the DuckDB store)."""
ROW_GROUP_ROWS: Final = 1_000_000
"""Rows of each Parquet row group mgwsim writes (the last one holds the rest), however the log came in:
whole, or shard by shard, the file is the same."""


def log_order(event: Event) -> tuple[str, int]:
    """Where an event goes in a log mgwsim writes: by account, then by time (a sort key).

    Accounts share nothing, so this is the order of a run in shards of whole accounts, whatever
    the shard size; a stable sort keeps the order of an account's events of one instant (the
    order metering processes them in, EVENTS.md: ties by file order), which a run sets with
    :func:`run_log_order`.
    """
    return event.account, event.ts


def event_sim(event: Event) -> str | None:
    """The SIM an event is about: its ``sim`` field, or a diagnostic event's ``sim`` among its extra fields."""
    if event.sim is not None or '"sim"' not in event.extra:
        return event.sim
    sim = json.loads(event.extra).get("sim")
    return sim if isinstance(sim, str) else None


def run_log_order(sim_ranks: Mapping[str, int]) -> Callable[[Event], tuple[str, int, int]]:
    """The order a simulated run writes its log in: :func:`log_order`, and one order for ties.

    An account's events of one instant: first those about no SIM (a gateway's, points, SMS), in
    the order they happened; then SIM by SIM in the rank ``sim_ranks`` gives (the engine's device
    order), each SIM's other events in the order they happened before its ``sim.traffic`` records
    (in the order they were written). How an engine happens to visit its devices — SimPy's order
    of processes, or fleet by fleet in bulk — so does not show in the log: every engine writes the
    same bytes. A compact traffic block keeps this order with its rows
    (:class:`metering.compact.CompactLog`).
    """

    def key(event: Event) -> tuple[str, int, int]:
        sim = event_sim(event)
        tie = -1 if sim is None else 2 * sim_ranks[sim] + (event.type == "sim.traffic")
        return event.account, event.ts, tie

    return key


class EventLogError(Exception):
    """A bad event log: the message is one line naming the file, line and reason."""


def log_format(path: Path) -> str:
    """Return the format of an event log path: ``jsonl``, ``jsonl.gz`` or ``parquet``.

    Raises:
        EventLogError: For any other suffix, or a folder.
    """
    if path.is_dir():
        raise EventLogError(f"{path}: is a folder, not an event log file")
    name = path.name.lower()
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise EventLogError(f"{path}: unknown event log format (expected {', '.join(SUFFIXES)})")


def decode_line(raw: bytes, path: Path, number: int) -> Event | None:
    """Decode and validate one line of a JSONL log; ``None`` for a blank line.

    The one place a JSONL line is judged: the row reader and the columnar path
    (:mod:`metering.jsonl_ingest`) both call it, so both name a bad line in the same words.

    Raises:
        EventLogError: Naming ``path:number`` and the reason.
    """
    text = raw.strip()
    if not text:
        return None
    try:
        record = decode_object(text)
    except UnicodeDecodeError:
        raise EventLogError(f"{path}:{number}: line is not UTF-8 text") from None
    except DuplicateKeyError as exc:
        raise EventLogError(f"{path}:{number}: key {exc.key[:60]!r} appears twice in one object") from None
    except json.JSONDecodeError as exc:
        reason = exc.msg.removesuffix(" at")  # json's "Invalid control character at" names no place of its own
        raise EventLogError(f"{path}:{number}: not valid JSON ({reason} at column {exc.colno})") from None
    except ValueError as exc:
        raise EventLogError(f"{path}:{number}: not valid JSON ({exc})") from None
    except RecursionError:
        raise EventLogError(f"{path}:{number}: JSON nested too deeply") from None
    if not isinstance(record, dict):
        raise EventLogError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    result = event_from_mapping(record, str(path), number)
    if isinstance(result, EventError):
        raise EventLogError(f"{path}:{number}: {result.reason}")
    return result


def _read_jsonl(path: Path, compressed: bool) -> Iterator[Event]:
    opener = gzip.open if compressed else open
    number = 0
    try:
        with opener(path, "rb") as stream:
            for number, raw in enumerate(stream, start=1):
                event = decode_line(raw, path, number)
                if event is not None:
                    yield event
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise EventLogError(f"{path}:{number + 1}: compressed stream is damaged or truncated ({exc})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise EventLogError(f"{path}: not a readable Parquet file ({exc})") from None
    schema = parquet.schema_arrow
    for name in ("ts", "type", "account"):
        if name not in schema.names:
            raise EventLogError(f"{path}: Parquet file has no column {name!r}")
    twice = next((name for index, name in enumerate(schema.names) if name in schema.names[:index]), None)
    if twice is not None:  # as a JSON object may not name a key twice
        raise EventLogError(f"{path}: Parquet file has the column {twice[:60]!r} twice")
    for name in ("ts", "expires"):
        if name in schema.names:
            column_type = schema.field(name).type
            if pa.types.is_timestamp(column_type) and column_type.tz is None:
                raise EventLogError(f"{path}: column {name!r} is a timestamp without time zone")
            if not _time_column(column_type):  # an epoch count says neither its unit nor its zone
                raise EventLogError(
                    f"{path}: column {name!r} is {column_type}, not a time: "
                    "give a timestamp with a time zone, or RFC 3339 text with an offset"
                )
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=65_536):
            columns = {name: batch.column(name) for name in batch.schema.names}
            for name in ("ts", "expires"):
                if name in columns and pa.types.is_timestamp(columns[name].type):
                    columns[name] = columns[name].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            names = list(columns)
            values = [columns[name].to_pylist() for name in names]
            for offset in range(batch.num_rows):
                row += 1
                yield row, {name: values[i][offset] for i, name in enumerate(names)}
    except (pa.ArrowInvalid, OSError) as exc:
        raise EventLogError(f"{path}:{row + 1}: damaged Parquet data ({exc})") from None


def _time_column(column_type: pa.DataType) -> bool:
    """Whether a Parquet column of this type can hold the event format's instants (or only nulls)."""
    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    kinds = (
        pa.types.is_timestamp,
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_string_view,
        pa.types.is_null,
    )
    return any(bool(kind(column_type)) for kind in kinds)


def _read_parquet(path: Path) -> Iterator[Event]:
    for row, record in _parquet_rows(path):
        cleaned = {key: value for key, value in record.items() if value is not None or key in ("ts", "type", "account")}
        expires = cleaned.get("expires")
        if isinstance(expires, int):
            if not MIN_INSTANT <= expires <= MAX_INSTANT:
                raise EventLogError(f"{path}:{row}: field 'expires' lies outside {INSTANT_RANGE}")
            cleaned["expires"] = format_instant(expires)
        extra = cleaned.pop("extra", None)
        if extra:
            try:
                decoded = decode_object(extra)
            except DuplicateKeyError as exc:
                raise EventLogError(f"{path}:{row}: column 'extra' names key {exc.key[:60]!r} twice") from None
            except (ValueError, RecursionError):
                raise EventLogError(f"{path}:{row}: column 'extra' is not a JSON object") from None
            if not isinstance(decoded, dict):
                raise EventLogError(f"{path}:{row}: column 'extra' is not a JSON object")
            clash = next((key for key in decoded if key in cleaned), None)
            if clash is not None:
                raise EventLogError(f"{path}:{row}: column 'extra' repeats the field {clash[:60]!r}")
            cleaned.update(decoded)
        result = event_from_mapping(cleaned, str(path), row, epoch_ts=True)
        if isinstance(result, EventError):
            raise EventLogError(f"{path}:{row}: {result.reason}")
        yield result


def read_event_log(path: Path) -> Iterator[Event]:
    """Yield the events of one log file in file order.

    Raises:
        EventLogError: At the first bad record, or when the file cannot be read.
    """
    fmt = log_format(path)
    if path.is_dir():
        raise EventLogError(f"{path}: is a folder, not an event log file")
    if not path.is_file():
        raise EventLogError(f"{path}: no such file")
    if fmt == "parquet":
        return _read_parquet(path)
    return _read_jsonl(path, compressed=fmt == "jsonl.gz")


def read_event_logs(paths: Iterable[Path]) -> list[Event]:
    """Read several logs, in the order given, into one list (file order kept).

    Raises:
        EventLogError: At the first bad record of any file.
    """
    events: list[Event] = []
    for path in paths:
        events.extend(read_event_log(path))
    return events


def event_to_json(event: Event) -> dict[str, Any]:
    """The JSON object of one event, as EVENTS.md writes it (times in JST)."""
    record: dict[str, Any] = {
        "ts": format_instant(event.ts),
        "type": event.type,
        "account": event.account,
        "id": event.id,
    }
    for name in EVENT_COLUMNS:
        value = getattr(event, name)
        if value is not None:
            record[name] = format_instant(value) if name == "expires" else value
    if event.extra:
        record.update(json.loads(event.extra))
    return record


def event_line(event: Event) -> str:
    """One event as a line of a JSONL log (without the newline)."""
    return json.dumps(event_to_json(event), ensure_ascii=False, separators=(", ", ": "))


def events_to_arrow(events: Iterable[Event]) -> pa.Table:
    """The columnar form (:data:`ARROW_SCHEMA`) of a sequence of events."""
    columns: dict[str, list[Any]] = {name: [] for name in ARROW_SCHEMA.names}
    for event in events:
        columns["ts"].append(event.ts)
        columns["type"].append(event.type)
        columns["account"].append(event.account)
        columns["id"].append(event.id)
        for name in EVENT_COLUMNS:
            columns[name].append(getattr(event, name))
        columns["extra"].append(event.extra or None)
    arrays = []
    for schema_field in ARROW_SCHEMA:
        values = columns[schema_field.name]
        if pa.types.is_timestamp(schema_field.type):
            arrays.append(pa.array(values, type=pa.int64()).cast(schema_field.type))
        else:
            arrays.append(pa.array(values, type=schema_field.type))
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


class EventLogAppender:
    """An event log being written, log by log: Parquet row groups, or JSONL lines (gzip-compressed or not).

    The one writer of every format: :func:`write_event_log` writes one log with it, a run in
    shards (:mod:`simulator.streamed_run`) one shard's log after another. A compact log goes in
    as it is held (its Arrow batches, or its lines built column by column); other events one by one.
    Parquet rows are written in row groups of :data:`ROW_GROUP_ROWS`, whatever the logs added, each
    group's columns handed to the writer in one piece, so the same events give the same file
    however they were handed in.
    """

    def __init__(self, path: Path, fmt: str) -> None:
        """Open ``path`` for a log of ``fmt`` (``parquet``, ``jsonl`` or ``jsonl.gz``, see :func:`log_format`)."""
        self.file = open_write_behind(path)  # on its way to the disk as it is written
        self.lines: io.BufferedIOBase | None = None
        try:
            self.parquet = pq.ParquetWriter(self.file, ARROW_SCHEMA) if fmt == "parquet" else None
            if self.parquet is None:
                self.lines = gzip.GzipFile("", "wb", fileobj=self.file, mtime=0) if fmt == "jsonl.gz" else self.file
        except BaseException:
            self.file.close()
            raise
        self.events = 0
        self.pending: list[pa.Table] = []  # Parquet rows not yet a whole row group
        self.pending_rows = 0

    def _write_groups(self, last: bool = False) -> None:
        """Write the pending rows in whole row groups (``last``: the rest too, as the last group)."""
        assert self.parquet is not None
        if self.pending_rows < ROW_GROUP_ROWS and not (last and self.pending_rows):
            return
        rows = pa.concat_tables(self.pending)
        whole = self.pending_rows if last else self.pending_rows - self.pending_rows % ROW_GROUP_ROWS
        for first in range(0, whole, ROW_GROUP_ROWS):
            # one chunk per column: where the writer cuts a page or gives up a dictionary follows
            # the chunks it is handed, so the pieces the rows came in must not reach it
            group = rows.slice(first, min(ROW_GROUP_ROWS, whole - first)).combine_chunks()
            self.parquet.write_table(group, row_group_size=group.num_rows)
        rest = rows.slice(whole)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def add(self, events: Iterable[Event]) -> int:
        """Append events; return how many."""
        before = self.events
        if self.parquet is not None:
            batches = getattr(events, "to_arrow_batches", None)
            for batch in batches() if batches is not None else [events_to_arrow(events)]:
                self.pending.append(batch)
                self.pending_rows += batch.num_rows
                self.events += batch.num_rows
                self._write_groups()
            return self.events - before
        assert self.lines is not None
        chunks = getattr(events, "jsonl_chunks", None)
        if chunks is not None:  # a compact log: its traffic rows as lines built column by column
            for chunk in chunks():
                self.lines.write(chunk)
                self.events += chunk.count(b"\n")
            return self.events - before
        for event in events:
            self.lines.write(event_line(event).encode("utf-8") + b"\n")
            self.events += 1
        return self.events - before

    def close(self) -> None:
        """Finish the file (its Parquet footer, the end of its gzip stream) and close it."""
        try:
            if self.parquet is not None:
                self._write_groups(last=True)
                self.parquet.close()
            elif self.lines is not None and self.lines is not self.file:
                self.lines.close()  # the gzip stream: its end goes into the file
        finally:
            self.file.close()


def write_event_log(events: Iterable[Event], path: Path, files: contextlib.ExitStack | None = None) -> int:
    """Write events to ``path`` (format by suffix) atomically; return how many were written.

    Args:
        events: The events, in the order the log keeps.
        path: The log's file.
        files: When given, the log is one file of a set, a stack of :class:`AtomicWriter`: written
            whole now under a temporary name, renamed into place when ``files`` closes without an
            error, and removed when it closes with one.
    """
    fmt = log_format(path)
    with contextlib.ExitStack() as own:
        temporary = (files if files is not None else own).enter_context(AtomicWriter(path))
        appender = EventLogAppender(temporary, fmt)
        try:
            return appender.add(events)
        finally:
            appender.close()
