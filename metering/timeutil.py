"""Time in the metering core: instants, JST calendar months and RFC 3339 parsing.

Billing months are calendar months in Japan time (Asia/Tokyo, UTC+9, no DST). Instants are
held as integer microseconds since the Unix epoch (UTC), which is what Parquet and DuckDB use
and what sorts and vectorises cheaply. A month is held as an integer index
``year * 12 + (month - 1)`` so that month arithmetic is plain integer arithmetic.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

JST = timezone(timedelta(hours=9), "JST")
"""Japan Standard Time. Japan has no daylight saving time, so a fixed offset is exact."""

US_PER_SECOND = 1_000_000
JST_OFFSET_US = 9 * 3600 * US_PER_SECOND

FIRST_YEAR = 1970
"""The first year an event, a month or an expiry may lie in (EVENTS.md)."""
LAST_YEAR = 2999
"""The last year an event, a month or an expiry may lie in (EVENTS.md)."""
MIN_INSTANT = 0
"""1970-01-01T00:00:00Z, the earliest instant the event format accepts."""
MAX_INSTANT = 32_503_680_000 * US_PER_SECOND - 1
"""The last microsecond of 2999-12-31 UTC, the latest instant the event format accepts."""
INSTANT_RANGE = "1970-01-01T00:00:00Z..2999-12-31T23:59:59Z"
"""The accepted range of instants, in words for messages."""

_MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|z|[+-]\d{2}:\d{2})$")


class TimeFormatError(ValueError):
    """A timestamp or month string that is not in the required form."""


def parse_instant(text: str) -> int:
    """Parse an RFC 3339 timestamp that carries an offset into epoch microseconds.

    Args:
        text: For example ``2026-01-10T09:00:00+09:00`` or ``2026-01-10T00:00:00Z``.

    Returns:
        Microseconds since 1970-01-01T00:00:00Z.

    Raises:
        TimeFormatError: If the text is not RFC 3339, has no offset, or lies outside
            :data:`INSTANT_RANGE`.
    """
    if not _RFC3339_RE.match(text):
        if re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?$", text):
            raise TimeFormatError(f"timestamp {text!r} has no UTC offset")
        raise TimeFormatError(f"timestamp {text!r} is not RFC 3339")
    normalized = text.replace("z", "Z").replace("t", "T")
    frac = re.search(r"\.(\d+)", normalized)
    if frac and len(frac.group(1)) > 6:
        if set(frac.group(1)[6:]) != {"0"}:
            raise TimeFormatError(f"timestamp {text!r} is finer than a microsecond")
        normalized = normalized.replace(frac.group(0), "." + frac.group(1)[:6])
    try:
        moment = datetime.fromisoformat(normalized)
    except ValueError as exc:
        raise TimeFormatError(f"timestamp {text!r} is not a valid date and time") from exc
    instant = instant_from_datetime(moment)
    if not MIN_INSTANT <= instant <= MAX_INSTANT:
        raise TimeFormatError(f"timestamp {text!r} lies outside {INSTANT_RANGE}")
    return instant


def instant_from_datetime(moment: datetime) -> int:
    """Convert a timezone-aware datetime into epoch microseconds.

    Raises:
        TimeFormatError: If ``moment`` is naive.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise TimeFormatError(f"datetime {moment.isoformat()} has no timezone")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def datetime_from_instant(instant_us: int, tz: timezone = JST) -> datetime:
    """Convert epoch microseconds into an aware datetime in ``tz`` (JST by default)."""
    return datetime(1970, 1, 1, tzinfo=UTC).astimezone(tz) + timedelta(microseconds=instant_us)


def format_instant(instant_us: int) -> str:
    """Format epoch microseconds as RFC 3339 in JST, e.g. ``2026-01-10T09:00:00+09:00``."""
    moment = datetime_from_instant(instant_us)
    if moment.microsecond:
        return moment.isoformat(timespec="microseconds")
    return moment.isoformat(timespec="seconds")


def month_of_instant(instant_us: int) -> int:
    """Return the JST calendar month index of an instant."""
    moment = datetime_from_instant(instant_us)
    return moment.year * 12 + moment.month - 1


def month_indexes(jst_seconds: Any) -> Any:
    """The same JST month index, vectorised, of JST epoch seconds (epoch seconds + 9 h) as a numpy array."""
    import numpy as np

    months = np.asarray(jst_seconds, dtype="datetime64[s]").astype("datetime64[M]").astype(np.int64)
    return months + 1970 * 12


def months_of_instants(instants_us: Any) -> Any:
    """:func:`month_of_instant`, vectorised, of epoch-microsecond instants as a numpy array."""
    import numpy as np

    seconds = np.floor_divide(np.asarray(instants_us, dtype=np.int64), US_PER_SECOND)
    return month_indexes(seconds + JST_OFFSET_US // US_PER_SECOND)


def month_sql(instant: str = "ts") -> str:
    """The same JST month index in SQL (DuckDB), of an epoch-microsecond expression.

    ``year * 12 + month - 1`` of the instant shifted by Japan's fixed UTC+9 (:data:`JST_OFFSET_US`),
    so the columnar rater and :func:`month_of_instant` cannot disagree.
    """
    shifted = f"make_timestamp({instant} + {JST_OFFSET_US})"
    return f"(year({shifted}) * 12 + month({shifted}) - 1)"


def month_start(month: int) -> int:
    """Return the instant (epoch microseconds) at which JST month ``month`` starts."""
    year, zero_based = divmod(month, 12)
    return instant_from_datetime(datetime(year, zero_based + 1, 1, tzinfo=JST))


def month_end(month: int) -> int:
    """Return the instant at which JST month ``month`` ends (the start of the next one)."""
    return month_start(month + 1)


def parse_month(text: str) -> int:
    """Parse ``YYYY-MM`` into a month index.

    Raises:
        TimeFormatError: If the text is not of the form ``YYYY-MM`` or its year lies outside
            :data:`FIRST_YEAR` .. :data:`LAST_YEAR`.
    """
    match = _MONTH_RE.match(text)
    if not match:
        raise TimeFormatError(f"month {text!r} is not of the form YYYY-MM")
    year = int(match.group(1))
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise TimeFormatError(f"month {text!r} lies outside {FIRST_YEAR}-01..{LAST_YEAR}-12")
    return year * 12 + int(match.group(2)) - 1


@functools.lru_cache(maxsize=4096)
def format_month(month: int) -> str:
    """Format a month index as ``YYYY-MM``."""
    year, zero_based = divmod(month, 12)
    return f"{year:04d}-{zero_based + 1:02d}"


def parse_month_range(text: str) -> list[int]:
    """Parse ``YYYY-MM`` or ``YYYY-MM..YYYY-MM`` into the month indexes it names.

    Raises:
        TimeFormatError: If either end is malformed or the range runs backwards.
    """
    first_text, _, last_text = text.partition("..")
    first = parse_month(first_text)
    last = parse_month(last_text) if last_text else first
    if last < first:
        raise TimeFormatError(f"month range {text!r} ends before it starts")
    if last - first >= 1200:
        raise TimeFormatError(f"month range {text!r} is longer than 100 years")
    return list(range(first, last + 1))


STRICT_INSTANT_PATTERN = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
)
"""The RFC 3339 forms :func:`instant_sql` converts: ASCII digits, at most 6 fraction digits, upper case.

Every text of this form that names a real date and time is one :func:`parse_instant` accepts;
any other text (other digits, finer fractions, ``t`` or ``z``, an impossible date) is left to it.
"""


def instant_sql(text: str) -> str:
    """SQL (DuckDB): epoch microseconds of an RFC 3339 text, as :func:`parse_instant` gives them, or NULL.

    The text must have :data:`STRICT_INSTANT_PATTERN`'s form; DuckDB's own ``TIMESTAMPTZ`` cast
    then reads it, and refuses impossible dates (30 February, second 60). Where that cast is
    more lenient than Python's ``datetime`` — year 0, hour 24, an offset of 24 hours or 60
    minutes — the text is refused here. NULL means "not decided here": the row goes to
    :func:`parse_instant`, which gives the exact answer or the reason.
    """
    offset = f"right({text}, 6)"
    return (
        f"(CASE WHEN regexp_full_match({text}, '{STRICT_INSTANT_PATTERN}') AND substr({text}, 1, 4) <> '0000' "
        f"AND substr({text}, 12, 2) <= '23' AND (ends_with({text}, 'Z') OR (substr({offset}, 2, 2) <= '23' "
        f"AND substr({offset}, 5, 2) <= '59')) THEN epoch_us(TRY_CAST({text} AS TIMESTAMPTZ)) END)"
    )
