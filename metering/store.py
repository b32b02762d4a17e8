"""The embedded event store: a DuckDB file that event logs are appended to idempotently.

``mgwsim ingest`` validates each file, then appends its events in batches, each batch one
transaction: an event whose ``(account, id)`` is already stored is skipped; the same id with a
different content is an error naming the file and line. A store interrupted mid-ingest holds only
whole batches, and rerunning the same command completes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import duckdb
import pyarrow as pa

from metering.atomic import remove_tree
from metering.compact import CompactTraffic, traffic_insert_sql
from metering.eventlog import ARROW_SCHEMA, events_to_arrow, log_format, read_event_log
from metering.events import EVENT_COLUMNS, ICCID_PATTERN, NAME_PATTERN, ROUTES, Event
from metering.rating import deduplicate

LOG: Final = logging.getLogger(__name__)
"""Progress of long appends at INFO (``mgwsim -v``)."""
STORE_SCHEMA: Final = "mgwsim.store/1"
MEMORY_VARIABLE: Final = "MGWSIM_MEMORY_LIMIT"
"""Environment variable: DuckDB's memory limit for every store (overrides the stores' own)."""
MEMORY_LIMIT: Final = "1GB"
"""DuckDB's memory limit for a store; beyond it DuckDB spills to a private temporary directory."""
THREADS_VARIABLE: Final = "MGWSIM_DUCKDB_THREADS"
"""Environment variable: DuckDB threads per store (default: DuckDB's, one per core). Ray tasks set 1."""
BATCH_EVENTS: Final = 500_000

SPILL_PREFIX: Final = "mgwsim-duckdb-"
"""How a store's spill folder in the temporary folder is named: ``mgwsim-duckdb-PID-…``, PID its process's."""


def spill_folder() -> str:
    """A new spill folder for a store of this process, once those of processes that are gone are removed.

    A store removes its own folder when it closes. A process killed before that (SIGKILL, a lost Ray
    worker, the machine's OOM killer) cannot, so the next store opened on the machine does: every
    ``mgwsim-duckdb-PID-…`` folder whose process no longer runs.
    """
    for folder in Path(tempfile.gettempdir()).glob(f"{SPILL_PREFIX}*-*"):
        pid = folder.name.removeprefix(SPILL_PREFIX).partition("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            remove_tree(folder)
    return tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-")


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


COLUMNS_SQL: Final = """
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    type VARCHAR NOT NULL,
    account VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    sim VARCHAR, gateway VARCHAR, option VARCHAR, target VARCHAR,
    up_bytes BIGINT, down_bytes BIGINT, route VARCHAR, session VARCHAR,
    kind VARCHAR, count BIGINT, delivered BOOLEAN, bytes BIGINT, points BIGINT,
    expires BIGINT, extra VARCHAR,
    source VARCHAR, line BIGINT
"""
"""Columns of the ``events`` table: ingest order, the event, and where it came from."""

CONTENT_COLUMNS: Final = ("ts", "type", *EVENT_COLUMNS, "extra")


def compact_problem(traffic: CompactTraffic) -> str | None:
    """What makes compact traffic rows invalid events, in words (``None``: they are valid)."""
    for code, (iccid, account, gateway) in enumerate(
        zip(traffic.iccids, traffic.accounts, traffic.gateways, strict=True)
    ):
        if not re.fullmatch(ICCID_PATTERN, iccid):
            return f"SIM {code}: {iccid!r} is not an ICCID"
        if not re.fullmatch(NAME_PATTERN, account):
            return f"SIM {code}: account {account!r} is not a valid name"
        if not re.fullmatch(NAME_PATTERN, gateway):
            return f"SIM {code}: gateway {gateway!r} is not a valid name"
    if len(traffic) and (traffic.up_bytes.min() < 0 or traffic.down_bytes.min() < 0):
        return "negative byte count"
    if len(traffic) and not 0 <= int(traffic.route.min()) <= int(traffic.route.max()) < len(ROUTES):
        return "unknown route code"
    if len(traffic) and not 0 <= int(traffic.sim.min()) <= int(traffic.sim.max()) < len(traffic.iccids):
        return "unknown SIM code"
    return None


class StoreError(Exception):
    """A store that cannot be opened or an ingest that cannot proceed (one-line message).

    Attributes:
        status: The command line's exit status for it: 2, bad input (a damaged store, a clash).
    """

    status = 2


class StoreDamaged(StoreError):
    """The store file is damaged: DuckDB cannot read it back. Nothing was changed."""


class StoreUnavailable(StoreError):
    """Another process holds the store (DuckDB's lock)."""

    status = 3


class StoreIOError(StoreError):
    """Reading or writing the store failed at the operating system (full disk, permissions, I/O)."""

    status = 4


_DAMAGE_SIGNS: Final = (
    "corrupt",
    "checksum",
    "could not read enough bytes",
    "not a valid duckdb database",
    "serialization",
    "failed to read",
    "invalid block",
)
REINGEST_HINT: Final = (
    "the event logs are the source of truth: ingest them again into a new store "
    "(mgwsim ingest LOG… --db NEW.duckdb) and keep this file for inspection"
)


def without_progress_bar(connection: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """The connection, with DuckDB's progress bar turned off; every connection mgwsim opens goes through here.

    DuckDB prints its bar on standard output, not standard error, once a query runs for more than
    2 s, as any query on a large store does. The bytes would end up inside what a command
    prints there (``mgwsim bill … > invoice.json``). Progress is the CLI's job, on standard error.
    """
    connection.execute("SET enable_progress_bar = false")
    return connection


def _first_bytes(path: str) -> bytes:
    """The first 12 bytes of a file (fewer if it is shorter; none if it cannot be read)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(12)
    except OSError:
        return b""


def _has_duckdb_header(path: str) -> bool:
    """Whether a file starts like a DuckDB database (the magic ``DUCK`` at byte 8)."""
    return _first_bytes(path)[8:12] == b"DUCK"


def _not_a_store(path: str) -> str:
    """Why a file without a DuckDB header is not a store: an event log given as one, or another file."""
    first = _first_bytes(path)
    if first.startswith(b"PAR1") or first.lstrip()[:1] == b"{" or first.startswith(b"\x1f\x8b"):
        return f"{path}: not a DuckDB store but an event log, by its first bytes; name it as a log, without --db"
    return f"{path}: not a DuckDB store (no DuckDB header: another kind of file, or its first block is damaged)"


def store_failure(path: str, exc: duckdb.Error) -> StoreError:
    """One line for a DuckDB failure on the store at ``path``: damaged, locked, or an I/O failure."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    lowered = text.lower()
    if "could not set lock" in lowered or "conflicting lock" in lowered:
        return StoreUnavailable(f"{path}: the store is in use by another process ({text})")
    # DuckDB opens a file named .parquet, .csv or .json as a table of an in-memory database, which
    # a read-only connection refuses ("Cannot launch in-memory database in read-only mode").
    not_duckdb = ("not a valid duckdb database", "cannot launch in-memory database")
    if any(sign in lowered for sign in not_duckdb) and not _has_duckdb_header(path):
        return StoreDamaged(_not_a_store(path))
    if any(sign in lowered for sign in _DAMAGE_SIGNS) or isinstance(exc, duckdb.SerializationException):
        return StoreDamaged(f"{path}: the store is damaged ({text}); nothing was changed; {REINGEST_HINT}")
    if isinstance(exc, duckdb.IOException) or "no space left" in lowered or "permission denied" in lowered:
        return StoreIOError(f"{path}: {text}")
    if isinstance(exc, duckdb.OutOfMemoryException):
        return StoreIOError(f"{path}: out of memory ({text}); raise ${MEMORY_VARIABLE} or free memory")
    return StoreDamaged(f"{path}: the store cannot be read ({text}); nothing was changed; {REINGEST_HINT}")


def rollback_open(connection: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction, if DuckDB still has one: the failure that led here is the one to report."""
    with contextlib.suppress(duckdb.Error):
        connection.rollback()


def staging_table(events: list[Event], seqs: Sequence[int]) -> pa.Table:
    """The columnar batch to append: events with their ingest sequence numbers ``seqs`` and origin."""
    table = events_to_arrow(events)
    table = table.set_column(0, "ts", table.column("ts").cast(pa.int64()))
    index = ARROW_SCHEMA.get_field_index("expires")
    table = table.set_column(index, "expires", table.column("expires").cast(pa.int64()))
    table = table.add_column(0, "seq", pa.array(seqs, type=pa.int64()))
    table = table.append_column("source", pa.array([event.source for event in events], type=pa.string()))
    return table.append_column("line", pa.array([event.line for event in events], type=pa.int64()))


def batches(events: Iterable[Event], size: int) -> Iterator[list[Event]]:
    """The events in lists of ``size`` (the last one shorter), holding one list at a time."""
    batch: list[Event] = []
    for event in events:
        batch.append(event)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class EventStore:
    """A DuckDB file of events (or ``:memory:``). Use as a context manager."""

    def __init__(self, path: Path | str, read_only: bool = False, memory_limit: str | None = None) -> None:
        """Open (and create, unless read-only) the store at ``path``.

        ``memory_limit`` overrides :data:`MEMORY_LIMIT` (unless :data:`MEMORY_VARIABLE` is set).
        """
        self.path = str(path)
        self.memory_limit = os.environ.get(MEMORY_VARIABLE) or memory_limit or MEMORY_LIMIT
        if self.path != ":memory:" and Path(self.path).is_dir():
            raise StoreError(f"{self.path}: is a directory, not a DuckDB store file")
        if read_only and self.path != ":memory:" and not Path(self.path).is_file():
            raise StoreError(f"{self.path}: no such store (create it with `mgwsim ingest … --db {self.path}`)")
        existed = self.path != ":memory:" and Path(self.path).exists()
        if existed and not read_only:
            self.check(self.path)  # a damaged store is refused before anything could write to it
        self.spill = spill_folder()
        try:
            self.connection = without_progress_bar(
                duckdb.connect(self.path, read_only=read_only, config=self._config())
            )
        except duckdb.Error as exc:
            remove_tree(self.spill)
            raise store_failure(self.path, exc) from None
        except BaseException:  # a stop signal while DuckDB opens: no spill folder is left behind either
            remove_tree(self.spill)
            raise
        try:
            if not read_only:
                self.connection.execute(f"CREATE TABLE IF NOT EXISTS events ({COLUMNS_SQL})")
                self.connection.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
                self.connection.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", [STORE_SCHEMA])
            tables = {row[0] for row in self.connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
            found = self.scalar("SELECT value FROM meta WHERE key = 'schema'") if "meta" in tables else None
        except duckdb.Error as exc:
            self.close()
            raise store_failure(self.path, exc) from None
        except BaseException:
            self.close()
            raise
        if found != STORE_SCHEMA:
            self.close()
            raise StoreError(f"{self.path}: a DuckDB file, but not an mgwsim event store ({STORE_SCHEMA})")

    @staticmethod
    def check(path: str) -> None:
        """Read every block of a store once (DuckDB verifies each block's checksum), read-only.

        Raises:
            StoreError: A :class:`StoreDamaged` naming where, or the lock or I/O failure met.
        """
        try:
            with without_progress_bar(duckdb.connect(path, read_only=True)) as connection:
                tables = [row[0] for row in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
                for table in tables:
                    connection.execute(f'SELECT count(*), sum(hash(COLUMNS(*))) FROM "{table}"').fetchall()
        except duckdb.Error as exc:
            raise store_failure(path, exc) from None

    def _config(self) -> dict[str, str | bool | int | float | list[str]]:
        config: dict[str, str | bool | int | float | list[str]] = {
            "memory_limit": self.memory_limit,
            "temp_directory": self.spill,
        }
        threads = os.environ.get(THREADS_VARIABLE)
        if threads:
            config["threads"] = int(threads)
        return config

    def __enter__(self) -> EventStore:
        """Enter the context."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the connection."""
        self.close()

    def close(self) -> None:
        """Close the connection and remove the spill directory (even when stopped while closing)."""
        try:
            self.connection.close()
        finally:
            remove_tree(self.spill)

    def scalar(self, sql: str) -> Any:
        """The single value of a query (the whole result is fetched, as DuckDB requires)."""
        rows = self.connection.execute(sql).fetchall()
        return rows[0][0] if rows else None

    def count(self) -> int:
        """Number of stored events."""
        return int(self.scalar("SELECT count(*) FROM events"))

    def _next_seq(self) -> int:
        return int(self.scalar("SELECT coalesce(max(seq) + 1, 0) FROM events"))

    def append(self, events: Iterable[Event]) -> tuple[int, int]:
        """Append events in one transaction; return ``(added, skipped)``.

        Raises:
            StoreError: If an event reuses a stored id with a different content.
        """
        unique, conflicts = deduplicate(events)
        if conflicts:
            raise StoreError(str(conflicts[0]))
        if not unique:
            return 0, 0
        connection = self.connection
        connection.begin()
        try:
            first = self._next_seq()
            staged = staging_table(unique, range(first, first + len(unique)))
            connection.register("staged", staged)
            different = " OR ".join(f"s.{name} IS DISTINCT FROM e.{name}" for name in CONTENT_COLUMNS)
            clashes = connection.execute(
                f"SELECT s.source, s.line, s.id, e.source, e.line FROM staged s JOIN events e "
                f"ON s.account = e.account AND s.id = e.id WHERE {different} ORDER BY s.seq LIMIT 1"
            ).fetchall()
            if clashes:
                clash = clashes[0]
                raise StoreError(
                    f"{clash[0]}:{clash[1]}: event id {clash[2]!r} is already stored with a different "
                    f"content (from {clash[3]}:{clash[4]})"
                )
            connection.execute(
                "INSERT INTO events SELECT s.* FROM staged s ANTI JOIN events e "
                "ON s.account = e.account AND s.id = e.id"
            )
            added = int(self.scalar("SELECT count(*) FROM staged s SEMI JOIN events e ON s.seq = e.seq"))
            connection.commit()
        except BaseException:
            rollback_open(connection)
            raise
        finally:
            connection.unregister("staged")
        return added, len(unique) - added

    def append_compact(self, traffic: CompactTraffic) -> tuple[int, int]:
        """Append compact ``sim.traffic`` rows in one statement and transaction; return ``(added, skipped)``.

        The rows are checked the way the validator checks events (ICCID, account and gateway names
        per SIM, byte counts, routes) in bulk; rows whose id is already stored are skipped, and a
        stored id with a different content is an error, as for :meth:`append`.

        Raises:
            StoreError: For a row that is not a valid event, or a clash with a stored event.
        """
        problem = compact_problem(traffic)
        if problem is not None:
            raise StoreError(f"compact traffic: {problem}")
        if not len(traffic):
            return 0, 0
        connection = self.connection
        rows, sims = traffic.store_tables()
        connection.begin()
        try:
            connection.register("compact_rows", rows)
            connection.register("compact_sims", sims)
            source = traffic_insert_sql(traffic.id_infix, traffic.origin_us, self._next_seq())
            stored = self.count()
            if self.scalar("SELECT count(*) FROM events WHERE type = 'sim.traffic'"):
                different = " OR ".join(f"i.{name} IS DISTINCT FROM e.{name}" for name in CONTENT_COLUMNS)
                named = ", ".join(("seq", "ts", "type", "account", "id", *EVENT_COLUMNS, "extra", "source", "line"))
                clash = connection.execute(
                    f"SELECT i.id, e.source, e.line FROM (SELECT * FROM ({source}) AS t({named})) i "
                    f"JOIN events e ON i.account = e.account AND i.id = e.id WHERE {different} LIMIT 1"
                ).fetchall()
                if clash:
                    raise StoreError(
                        f"event id {clash[0][0]!r} is already stored with a different content "
                        f"(from {clash[0][1]}:{clash[0][2]})"
                    )
                source = (
                    f"SELECT * FROM ({source}) AS t({named}) ANTI JOIN events e "
                    "ON t.account = e.account AND t.id = e.id"
                )
            connection.execute(f"INSERT INTO events {source}").fetchall()
            added = self.count() - stored
            connection.commit()
        except BaseException:
            rollback_open(connection)
            raise
        finally:
            connection.unregister("compact_rows")
            connection.unregister("compact_sims")
        return added, len(traffic) - added

    def view_compact(self, traffic: CompactTraffic) -> int:
        """Make ``events`` the stored events and compact ``sim.traffic`` rows kept as numbers; return the rows' count.

        What :meth:`append_compact` would store, row for row (its ``seq``, ``source`` and
        ``line``), but the table of rows holds numbers only and ``events`` becomes a view that
        makes a row's id, ICCID, account and gateway when a query reads them: the simulator's
        online metering reads each traffic row a few times and most of them never by id, so the
        millions of id strings are not built and stored up front. The store takes no more
        appends afterwards (``events`` is a view). When traffic is stored already, its ids
        must be checked against the rows: the rows are appended (:meth:`append_compact`) instead.

        Raises:
            StoreError: For a row that is not a valid event, or a clash with a stored event.
        """
        if not len(traffic) or self.scalar("SELECT count(*) FROM events WHERE type = 'sim.traffic'"):
            return self.append_compact(traffic)[0]  # which checks the rows
        problem = compact_problem(traffic)
        if problem is not None:
            raise StoreError(f"compact traffic: {problem}")
        connection = self.connection
        rows, sims = traffic.store_tables()
        connection.register("compact_rows_arrow", rows)
        connection.register("compact_sims_arrow", sims)
        try:
            connection.execute("CREATE TABLE compact_rows AS SELECT * FROM compact_rows_arrow")
            connection.execute("CREATE TABLE compact_sims AS SELECT * FROM compact_sims_arrow")
        finally:
            connection.unregister("compact_rows_arrow")
            connection.unregister("compact_sims_arrow")
        source = traffic_insert_sql(traffic.id_infix, traffic.origin_us, self._next_seq())
        connection.execute("ALTER TABLE events RENAME TO stored_events")
        connection.execute(f"CREATE VIEW events AS SELECT * FROM stored_events UNION ALL {source}")
        return len(traffic)

    def ingest_file(self, path: Path, batch_events: int = BATCH_EVENTS, validate_first: bool = True) -> tuple[int, int]:
        """Append a log batch by batch, streaming it; return ``(added, skipped)``.

        With ``validate_first`` (what ``mgwsim ingest`` does) the whole file is checked before
        anything is stored, so a bad line stores nothing, and ids already stored are skipped;
        without it (a throw-away in-memory store, as ``bill`` uses) the events go in unchecked for
        reused ids, to be settled once with :meth:`settle_duplicates`. JSONL logs and plain Parquet
        logs are validated and appended in bulk, one transaction each (:mod:`metering.jsonl_ingest`,
        :mod:`metering.parquet_ingest`); a Parquet log with diagnostic events is read row by row,
        ``batch_events`` at a time.
        """
        fmt = log_format(path)
        if fmt == "parquet" and path.is_file():
            from metering.parquet_ingest import ingest_parquet

            self.connection.begin()
            try:
                result = ingest_parquet(self.connection, path, self._next_seq())
            except BaseException:
                rollback_open(self.connection)
                raise
            if result is not None:
                self.connection.commit()
                return result
            self.connection.rollback()
        elif path.is_file():
            return self._ingest_jsonl(path, fmt == "jsonl.gz", validate_first)
        if validate_first:
            for _ in read_event_log(path):
                pass
        added = skipped = 0
        for batch in batches(read_event_log(path), batch_events):
            batch_added, batch_skipped = self.append(batch)
            added, skipped = added + batch_added, skipped + batch_skipped
            LOG.info("%s: %s events added, %s already stored", path, f"{added:,}", f"{skipped:,}")
        return added, skipped

    def _ingest_jsonl(self, path: Path, compressed: bool, checked: bool) -> tuple[int, int]:
        """A JSONL log through the columnar path (:mod:`metering.jsonl_ingest`), in one transaction.

        ``checked`` (``mgwsim ingest``): the file is read into a temporary table, and only a file
        with no bad line and no reused id is appended, skipping events already stored. Otherwise
        (a throw-away store) the events go straight into the store, to be settled once with
        :meth:`settle_duplicates`.
        """
        from metering.jsonl_ingest import in_one_transaction, ingest_jsonl
        from metering.parquet_ingest import append_checked

        connection = self.connection
        first_seq = self._next_seq()

        def work(careful_from: int | None) -> tuple[int, int]:
            if not checked:
                return ingest_jsonl(connection, path, compressed, first_seq, "events", careful_from=careful_from), 0
            connection.execute(f"CREATE OR REPLACE TEMP TABLE jsonl_incoming ({COLUMNS_SQL})")
            ingest_jsonl(connection, path, compressed, first_seq, "jsonl_incoming", careful_from=careful_from)
            named = ", ".join(("line", "ts", "type", "account", "id", *EVENT_COLUMNS, "extra"))
            result = append_checked(connection, path, f"SELECT {named} FROM jsonl_incoming", first_seq)
            connection.execute("DROP TABLE jsonl_incoming")
            return result

        result = in_one_transaction(connection, work)
        if checked:
            LOG.info("%s: %s events added, %s already stored", path, f"{result[0]:,}", f"{result[1]:,}")
        return result

    def settle_duplicates(self) -> int:
        """Refuse reused ids and drop repeated events in a store filled unchecked; return how many were dropped.

        What a throw-away store needs after ``ingest_file(…, validate_first=False)``.

        Raises:
            StoreError: If an id was used by two different events (both places named).
        """
        content = ", ".join(CONTENT_COLUMNS)
        self.connection.execute(
            "CREATE OR REPLACE TEMP TABLE repeated_ids AS "
            "SELECT account, id FROM events GROUP BY account, id HAVING count(*) > 1"
        )
        try:
            if not self.scalar("SELECT count(*) FROM repeated_ids"):  # the usual case: one cheap aggregate
                return 0
            clash = self.connection.execute(
                "SELECT account, id FROM events SEMI JOIN repeated_ids USING (account, id) GROUP BY account, id "
                f"HAVING count(DISTINCT ({content})) > 1 ORDER BY min(seq) LIMIT 1"
            ).fetchall()
            if clash:
                account, event_id = clash[0]
                rows = self.connection.execute(
                    f"SELECT source, line, ({content}) FROM events WHERE account = ? AND id = ? ORDER BY seq",
                    [account, event_id],
                ).fetchall()
                first = rows[0]
                other = next(row for row in rows if row[2] != first[2])
                raise StoreError(
                    f"{other[0]}:{other[1]}: event id {event_id!r} was already used by a different event at "
                    f"{first[0]}:{first[1]}"
                )
            before = self.count()
            self.connection.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM (SELECT seq, row_number() OVER "
                "(PARTITION BY account, id ORDER BY seq) AS position FROM events SEMI JOIN repeated_ids "
                "USING (account, id)) WHERE position > 1)"
            ).fetchall()
            return before - self.count()
        finally:
            self.connection.execute("DROP TABLE IF EXISTS repeated_ids")

    def read_events(self) -> list[Event]:
        """All stored events in ingest order, read at once.

        Raises:
            StoreError: When the store cannot be read back (damaged; see :func:`store_failure`).
        """
        try:
            return list(self.events())
        except duckdb.Error as exc:
            raise store_failure(self.path, exc) from None

    def events(self) -> Iterator[Event]:
        """All stored events in ingest order."""
        names = ("ts", "type", "account", "id", *EVENT_COLUMNS, "extra", "source", "line")
        cursor = self.connection.execute(f"SELECT {', '.join(names)} FROM events ORDER BY seq")
        while True:
            rows = cursor.fetchmany(65_536)
            if not rows:
                return
            for row in rows:
                values: dict[str, Any] = dict(zip(names, row, strict=True))
                values["extra"] = values["extra"] or ""
                values["source"] = values["source"] or ""
                yield Event(**values)
