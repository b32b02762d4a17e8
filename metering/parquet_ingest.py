"""Columnar ingest of Parquet event logs into the store: validated in SQL, inserted in bulk.

Large logs are Parquet. Validating them row by row in Python would cost microseconds per event;
here DuckDB checks every row with the same rules as :func:`metering.events.event_from_mapping`
(generated from :data:`~metering.events.FIELD_SPECS`) and inserts them in one statement. The first
bad row, if any, is re-read and validated by the Python validator, so the message is exactly the
one the row-by-row reader gives.

Files this path does not handle (ids missing, diagnostic events with extra fields, timestamps as
strings, unexpected column types) return ``None`` and are read by the row-by-row path instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from metering.eventlog import EventLogError, read_event_log
from metering.events import (
    BILLED_TYPES,
    EVENT_COLUMNS,
    FIELD_SPECS,
    ICCID_PATTERN,
    NAME_PATTERN,
    OPTION_PATTERN,
    ROUTES,
    SMS_KINDS,
    is_secret_field,
)
from metering.timeutil import MAX_INSTANT, MIN_INSTANT

_IN_RANGE: Final = f"{{c}} BETWEEN {MIN_INSTANT} AND {MAX_INSTANT}"

_CHECKS: Final = {
    "iccid": f"regexp_full_match({{c}}, '{ICCID_PATTERN}')",
    "name": f"regexp_full_match({{c}}, '{NAME_PATTERN}')",
    "option": f"regexp_full_match({{c}}, '{OPTION_PATTERN}')",
    "route": "{c} IN (" + ", ".join(f"'{route}'" for route in ROUTES) + ")",
    "sms_kind": "{c} IN (" + ", ".join(f"'{kind}'" for kind in SMS_KINDS) + ")",
    "count": "{c} >= 0",
    "positive": "{c} > 0",
    "bool": "true",
    "instant": _IN_RANGE,
}
_TYPES: Final = {
    "up_bytes": "BIGINT",
    "down_bytes": "BIGINT",
    "count": "BIGINT",
    "bytes": "BIGINT",
    "points": "BIGINT",
    "delivered": "BOOLEAN",
}


def _valid_sql() -> str:
    """A SQL condition that is true exactly for rows the Python validator accepts.

    A ``CASE`` on the type, so each row evaluates only its own type's checks.
    """
    branches = []
    for event_type, specs in FIELD_SPECS.items():
        parts = []
        for name in EVENT_COLUMNS:
            spec = specs.get(name)
            if spec is None:
                parts.append(f"{name} IS NULL")
                continue
            check = _CHECKS[spec.kind].replace("{c}", name)
            parts.append(f"{name} IS NOT NULL AND {check}" if spec.required else f"({name} IS NULL OR {check})")
        branches.append(f"WHEN '{event_type}' THEN " + " AND ".join(parts))
    common = (
        f"ts IS NOT NULL AND {_IN_RANGE.replace('{c}', 'ts')} "
        f"AND account IS NOT NULL AND regexp_full_match(account, '{NAME_PATTERN}') "
        "AND id IS NOT NULL AND length(id) BETWEEN 1 AND 200"
    )
    return f"({common}) AND (CASE type " + " ".join(branches) + " ELSE false END)"


VALID_SQL: Final = _valid_sql()


def _source_sql(path: Path, schema: pa.Schema) -> str | None:
    """``SELECT`` of the file's rows in the store's column layout, or ``None`` if not eligible."""
    names = set(schema.names)
    for name in ("ts", "type", "account", "id"):
        if name not in names:
            return None
    if any(is_secret_field(name) for name in names):
        return None
    allowed = {"ts", "type", "account", "id", "extra", *EVENT_COLUMNS}
    if names - allowed:
        return None
    for name in ("ts", "expires"):
        if name in names:
            kind = schema.field(name).type
            if not pa.types.is_timestamp(kind) or kind.tz is None:
                return None
    columns = ["file_row_number + 1 AS line", "epoch_us(ts) AS ts", "type", "account", "id"]
    for name in EVENT_COLUMNS:
        if name == "expires":
            columns.append("epoch_us(expires) AS expires" if name in names else "NULL::BIGINT AS expires")
        elif name == "count" and name in names:  # absent counts are 1, as the row reader makes them
            counted = "coalesce(CAST(count AS BIGINT), 1)"
            columns.append(
                f"CASE WHEN type IN ('sms.sent', 'mono.message') THEN {counted} ELSE CAST(count AS BIGINT) END AS count"
            )
        elif name == "count":
            columns.append("CASE WHEN type IN ('sms.sent', 'mono.message') THEN 1::BIGINT END AS count")
        elif name in names:
            columns.append(f"CAST({name} AS {_TYPES.get(name, 'VARCHAR')}) AS {name}")
        else:
            columns.append(f"NULL::{_TYPES.get(name, 'VARCHAR')} AS {name}")
    columns.append("extra" if "extra" in names else "NULL::VARCHAR AS extra")
    literal = str(path).replace("'", "''")
    return f"SELECT {', '.join(columns)} FROM read_parquet('{literal}', file_row_number = true)"


def _exact_error(path: Path, row: int) -> EventLogError:
    """The row-by-row reader's message for a row the SQL check rejected."""
    try:
        for event in read_event_log(path):
            if event.line >= row:
                break
    except EventLogError as exc:
        return exc
    return EventLogError(f"{path}:{row}: row rejected by the columnar validator")


def ingest_parquet(connection: duckdb.DuckDBPyConnection, path: Path, first_seq: int) -> tuple[int, int] | None:
    """Validate and append a Parquet log in bulk; ``None`` when the file needs the row-by-row path.

    Runs inside the caller's transaction. Returns ``(added, skipped)``.

    Raises:
        EventLogError: For the first bad row (file and row named) or an unreadable file.
    """
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise EventLogError(f"{path}: not a readable Parquet file ({exc})") from None
    source = _source_sql(path, schema)
    if source is None:
        return None
    billed = ", ".join(f"'{name}'" for name in BILLED_TYPES)
    try:
        checked = connection.execute(
            f"SELECT count(*) FILTER (WHERE type NOT IN ({billed}) OR extra IS NOT NULL), "
            f"min(line) FILTER (WHERE NOT coalesce({VALID_SQL}, false)) FROM ({source})"
        ).fetchall()[0]
    except duckdb.Error:
        return None
    ineligible, bad = (int(value) if value is not None else None for value in checked)
    if ineligible:
        return None
    if bad is not None:
        raise _exact_error(path, bad)
    return append_checked(connection, path, source, first_seq)


def append_checked(connection: duckdb.DuckDBPyConnection, path: Path, source: str, first_seq: int) -> tuple[int, int]:
    """Append validated rows of one log, skipping events already stored; return ``(added, skipped)``.

    ``source`` is a ``SELECT`` of the log's rows: ``line`` (1-based), the event columns and
    ``extra``. An event is stored with ``seq = first_seq + line - 1``, so the file's order is kept.
    A row repeated in the file is stored once; an id used by two different events, in the file or
    against a stored event, is an error naming both places. Runs inside the caller's transaction.

    Raises:
        EventLogError: For an id reused with a different content.
    """
    literal = str(path).replace("'", "''")
    content = ", ".join(("ts", "type", *EVENT_COLUMNS, "extra"))
    rows, distinct = connection.execute(f"SELECT count(*), count(DISTINCT (account, id)) FROM ({source})").fetchall()[0]
    if distinct < rows:
        clash = connection.execute(
            f"SELECT id, min(line), max(line) FROM ({source}) GROUP BY account, id "
            f"HAVING count(DISTINCT ({content})) > 1 ORDER BY 2 LIMIT 1"
        ).fetchall()
        if clash:
            event_id, first, second = clash[0]
            raise EventLogError(
                f"{path}:{second}: event id {event_id!r} was already used by a different event at {path}:{first}"
            )
        source = f"SELECT * FROM ({source}) QUALIFY row_number() OVER (PARTITION BY account, id ORDER BY line) = 1"
    stored = int(connection.execute("SELECT count(*) FROM events").fetchall()[0][0])
    selection = (
        f"SELECT {first_seq - 1} + i.line, i.ts, i.type, i.account, i.id, "
        + ", ".join(f"i.{name}" for name in EVENT_COLUMNS)
        + f", i.extra, '{literal}', i.line FROM ({source}) i"
    )
    if stored:
        different = " OR ".join(
            f"i.{name} IS DISTINCT FROM e.{name}" for name in ("ts", "type", *EVENT_COLUMNS, "extra")
        )
        clash = connection.execute(
            f"SELECT i.line, i.id, e.source, e.line FROM ({source}) i JOIN events e "
            f"ON i.account = e.account AND i.id = e.id WHERE {different} ORDER BY 1 LIMIT 1"
        ).fetchall()
        if clash:
            line, event_id, other, other_line = clash[0]
            raise EventLogError(
                f"{path}:{line}: event id {event_id!r} is already stored with a different content "
                f"(from {other}:{other_line})"
            )
        selection += " ANTI JOIN events e ON i.account = e.account AND i.id = e.id"
    connection.execute(f"INSERT INTO events {selection}").fetchall()
    added = int(connection.execute("SELECT count(*) FROM events").fetchall()[0][0]) - stored
    return added, int(rows) - added
