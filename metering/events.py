"""The usage event record (``mgwsim.events/1``) and its validation.

Every event is an immutable :class:`Event`. :func:`event_from_mapping` turns one decoded JSON
object (or one Parquet row) into an event or an :class:`EventError` value naming the reason; the
readers in :mod:`metering.eventlog` add the file and line. Nothing here raises for bad data.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from metering.timeutil import INSTANT_RANGE, MAX_INSTANT, MIN_INSTANT, TimeFormatError, parse_instant

SCHEMA: Final = "mgwsim.events/1"
INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)
MAX_TEXT: Final = 65_536
"""The longest string (in characters) any field of an event may hold (EVENTS.md)."""

BILLED_TYPES: Final = (
    "sim.registered",
    "sim.deleted",
    "sim.traffic",
    "gateway.created",
    "gateway.deleted",
    "option.enabled",
    "option.disabled",
    "sms.sent",
    "mono.device.registered",
    "mono.device.deleted",
    "mono.message",
    "points.purchased",
    "points.granted",
    "account.deleted",
)
"""Event types that the rating rules read."""

DIAGNOSTIC_TYPES: Final = (
    "sim.pin_failed",
    "sim.locked",
    "sim.unlocked",
    "sim.dead",
    "session.created",
    "session.deleted",
    "gateway.power",
    "gateway.internet",
    "gateway.switch",
)
"""Event types the simulator writes for disputes; kept, never billed."""

EVENT_TYPES: Final = BILLED_TYPES + DIAGNOSTIC_TYPES

ROUTES: Final = ("closed", "internet")
SMS_KINDS: Final = ("2fa", "a2p")
COMMON_FIELDS: Final = ("ts", "type", "account", "id")

ICCID_PATTERN: Final = "[0-9]{18,20}"
NAME_PATTERN: Final = "[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}"
OPTION_PATTERN: Final = "[a-z][a-z0-9_]{0,63}"
_ICCID_RE = re.compile(ICCID_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)
_OPTION_RE = re.compile(OPTION_PATTERN)
SECRET_WORDS: Final = frozenset({"pin", "puk", "passcode", "pincode", "pukcode"})
"""Words that make a field name a secret's (EVENTS.md); so does ``pass`` followed by ``code``."""
_CAMEL_RE = re.compile(r"(?<=[a-z])(?=[A-Z])")
_DIGITS_RE = re.compile(r"([0-9]+)")
_SEPARATORS_RE = re.compile(r"[_\-. ]+")
_PANDAS_INDEX = re.compile(r"__index_level_[0-9]+__")
"""The column pandas' ``to_parquet`` adds for an index that is not the default one."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One type-specific field of an event: its kind and whether it is required."""

    kind: str
    required: bool


def _spec(**fields: str) -> dict[str, FieldSpec]:
    specs: dict[str, FieldSpec] = {}
    for name, kind in fields.items():
        optional = kind.endswith("?")
        specs[name] = FieldSpec(kind.rstrip("?"), not optional)
    return specs


FIELD_SPECS: Final[dict[str, dict[str, FieldSpec]]] = {
    "sim.registered": _spec(sim="iccid"),
    "sim.deleted": _spec(sim="iccid"),
    "sim.traffic": _spec(
        sim="iccid",
        up_bytes="count",
        down_bytes="count",
        route="route",
        session="name?",
        gateway="name?",
    ),
    "gateway.created": _spec(gateway="name"),
    "gateway.deleted": _spec(gateway="name"),
    "option.enabled": _spec(option="option", target="name"),
    "option.disabled": _spec(option="option", target="name"),
    "sms.sent": _spec(kind="sms_kind", count="positive?", delivered="bool?"),
    "mono.device.registered": _spec(sim="iccid"),
    "mono.device.deleted": _spec(sim="iccid"),
    "mono.message": _spec(sim="iccid", count="positive?", bytes="count?"),
    "points.purchased": _spec(points="positive"),
    "points.granted": _spec(points="positive", expires="instant"),
    "account.deleted": _spec(),
}
"""The type-specific fields of every billed event type (EVENTS.md)."""

EVENT_COLUMNS: Final = (
    "sim",
    "gateway",
    "option",
    "target",
    "up_bytes",
    "down_bytes",
    "route",
    "session",
    "kind",
    "count",
    "delivered",
    "bytes",
    "points",
    "expires",
)
"""Type-specific columns, in the order the columnar (Parquet, DuckDB) form uses."""


@dataclass(frozen=True, slots=True)
class Event:
    """One usage event, validated and normalised.

    Attributes:
        ts: The instant, epoch microseconds (UTC).
        type: One of :data:`EVENT_TYPES`.
        account: The account (project) the event belongs to.
        id: The event id; the content hash ``h-…`` when the log gave none.
        sim: ICCID, for SIM, traffic and Mono events.
        gateway: Gateway id.
        option: Sub-option name (``ip_address``, ``custom_dns``, ``terminal_lock`` …).
        target: What the sub-option applies to.
        up_bytes: Uplink bytes of a ``sim.traffic`` event.
        down_bytes: Downlink bytes of a ``sim.traffic`` event.
        route: ``closed`` or ``internet``.
        session: Session id, when the simulator knows it.
        kind: SMS kind (``2fa`` / ``a2p``).
        count: Message count of ``sms.sent`` and ``mono.message`` (default 1).
        delivered: Whether an SMS was delivered (never changes the fee).
        bytes: Payload bytes of a ``mono.message``.
        points: Points of a purchase or grant.
        expires: Expiry instant of free points.
        extra: Further fields of diagnostic events, as canonical JSON (or ``""``).
        source: The file the event came from (for messages only).
        line: The line (or Parquet row, 1-based) in ``source``.
    """

    ts: int
    type: str
    account: str
    id: str
    sim: str | None = None
    gateway: str | None = None
    option: str | None = None
    target: str | None = None
    up_bytes: int | None = None
    down_bytes: int | None = None
    route: str | None = None
    session: str | None = None
    kind: str | None = None
    count: int | None = None
    delivered: bool | None = None
    bytes: int | None = None
    points: int | None = None
    expires: int | None = None
    extra: str = ""
    source: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its fields' values, in order: faster than a slotted dataclass's state.

        Measured: about 2x faster to pickle, 1.5x to load. A Ray worker hands back its shard's
        ordinary events this way, to the driver that writes them.
        """
        return Event, _event_values(self)

    @property
    def where(self) -> str:
        """``file:line`` of the event, for messages."""
        return f"{self.source}:{self.line}" if self.source else f"event {self.id}"

    def content(self) -> dict[str, Any]:
        """The event's normalised content (no id, no source), used for the content hash."""
        columns = {name: getattr(self, name) for name in EVENT_COLUMNS}
        return event_content(self.ts, self.type, self.account, columns, self.extra)


_event_values: Final = operator.attrgetter(*(item.name for item in fields(Event)))
"""An event's fields' values, in order (what :meth:`Event.__reduce__` pickles)."""


@dataclass(frozen=True, slots=True)
class EventError:
    """Why one event record was rejected (an error value, not an exception)."""

    reason: str
    source: str = ""
    line: int = 0

    def __str__(self) -> str:
        """One line: ``file:line: reason``."""
        if self.source:
            return f"{self.source}:{self.line}: {self.reason}"
        return self.reason


def event_content(ts: int, event_type: str, account: str, columns: Mapping[str, Any], extra: str) -> dict[str, Any]:
    """The normalised content of an event with these values (see :meth:`Event.content`)."""
    content: dict[str, Any] = {"ts": ts, "type": event_type, "account": account}
    content.update((name, value) for name, value in columns.items() if value is not None)
    if extra:
        content["extra"] = extra
    return content


def content_id(content: Mapping[str, Any]) -> str:
    """A stable id for an event that has none: a hash of its normalised content."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "h-" + hashlib.sha256(canonical.encode()).hexdigest()[:24]


def name_words(name: str) -> list[str]:
    """A field name's words, lower case: split at ``_ - . space``, lower-to-upper camelCase and digits.

    >>> name_words("userPassCode_2")
    ['user', 'pass', 'code', '2']
    """
    spaced = _DIGITS_RE.sub(r" \1 ", _CAMEL_RE.sub(" ", name))
    return [word.lower() for word in _SEPARATORS_RE.split(spaced) if word]


@functools.lru_cache(maxsize=4096)
def is_secret_field(name: str) -> bool:
    """Whether a field name denotes a PIN, PUK or PASSCODE (never allowed in an event).

    The rule of EVENTS.md: the name has a word of :data:`SECRET_WORDS`, or the word ``pass``
    followed by the word ``code`` (see :func:`name_words`). ``entered_pin``, ``sim.puk``,
    ``passCode``, ``pin1`` are secret; ``shipping`` and ``spin_rate`` are not.
    """
    words = name_words(name)
    if any(word in SECRET_WORDS for word in words):
        return True
    return any(first == "pass" and second == "code" for first, second in itertools.pairwise(words))


class DuplicateKeyError(ValueError):
    """A JSON object that names one key twice (raised while decoding, by :func:`decode_object`)."""

    def __init__(self, key: str) -> None:
        """Remember the repeated key."""
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return record


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_PLAIN: Final = json.JSONDecoder(parse_constant=_no_constant)
_CHECKED: Final = json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_unique_pairs)
_QUOTE_SPACES: Final = ('" ', '"\t', '"\n', '"\r')


def decode_object(text: str | bytes) -> Any:
    """Decode JSON as the event format reads it: duplicate keys and NaN/Infinity are refused.

    A flat object whose every key is followed directly by ``:`` (what every JSON writer emits
    unless asked to pretty-print) is checked by counting: each key occurrence puts ``":`` in the
    text, so when the text holds exactly as many ``":`` as the object has keys, no key repeats.
    Anything else is decoded again with a hook that looks at every key.

    Raises:
        DuplicateKeyError: For an object with a key given twice.
        ValueError: For invalid JSON (a :class:`json.JSONDecodeError`), ``NaN``/``Infinity``, or
            bytes that are not UTF-8 (a :class:`UnicodeDecodeError`).
        RecursionError: For JSON nested too deeply.
    """
    decoded = text.decode("utf-8-sig") if isinstance(text, bytes) else text
    record = _PLAIN.decode(decoded)
    if (
        type(record) is dict
        and decoded.count('":') == len(record)
        and not any(spaced in decoded for spaced in _QUOTE_SPACES)
    ):
        return record
    return _CHECKED.decode(decoded)


def _check_value(name: str, kind: str, value: Any) -> tuple[Any, str | None]:
    """Validate one field; return the normalised value or a reason."""
    if kind in ("count", "positive"):
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"field {name!r} must be an integer, got {type(value).__name__}"
        if value < 0 or (kind == "positive" and value == 0):
            bound = "> 0" if kind == "positive" else ">= 0"
            return None, f"field {name!r} must be {bound}, got {value}"
        if value > INT64_MAX:
            return None, f"field {name!r} is larger than 2^63-1"
        return value, None
    if kind == "bool":
        if not isinstance(value, bool):
            return None, f"field {name!r} must be true or false, got {type(value).__name__}"
        return value, None
    if not isinstance(value, str):
        return None, f"field {name!r} must be a string, got {type(value).__name__}"
    if kind == "iccid" and not _ICCID_RE.fullmatch(value):
        return None, f"field {name!r} must be an ICCID of 18-20 digits"
    if kind == "name" and not _NAME_RE.fullmatch(value):
        return None, f"field {name!r} must be 1-128 characters of [A-Za-z0-9._:@/-]"
    if kind == "option" and not _OPTION_RE.fullmatch(value):
        return None, f"field {name!r} must be a lower-case name like 'ip_address'"
    if kind == "route" and value not in ROUTES:
        return None, f"field {name!r} must be one of {', '.join(ROUTES)}"
    if kind == "sms_kind" and value not in SMS_KINDS:
        return None, f"field {name!r} must be one of {', '.join(SMS_KINDS)}"
    if kind == "instant":
        try:
            return parse_instant(value), None
        except TimeFormatError as exc:
            return None, f"field {name!r}: {exc}"
    return value, None


def encode_extra(fields: Mapping[str, Any]) -> str:
    """The canonical text of a diagnostic event's extra fields, as the log reader makes it ("" if none)."""
    return json.dumps(dict(fields), sort_keys=True, separators=(",", ":")) if fields else ""


def _is_unicode(text: str) -> bool:
    """Whether a string is Unicode text UTF-8 can hold (a JSON escape of a lone surrogate makes one that is not)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scalar_problem(name: str, value: Any) -> str | None:
    """Why a diagnostic field's value is not allowed (``None`` when it is)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else f"field {name!r} does not fit in 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"field {name!r} is not a finite number"
    if isinstance(value, str):
        return None
    return f"field {name!r} must be a scalar"


def event_from_mapping(
    record: Mapping[str, Any], source: str = "", line: int = 0, epoch_ts: bool = False
) -> Event | EventError:
    """Validate one decoded event record.

    Args:
        record: One JSON object of the event log (or one Parquet row as a dict).
        source: The file it was read from, for messages.
        line: Its line (or row) in that file.
        epoch_ts: Whether ``ts`` may be epoch microseconds as an int (a Parquet row); in a
            JSON object it must be an RFC 3339 string.

    Returns:
        The normalised :class:`Event`, or an :class:`EventError` with the reason.
    """
    for name, value in record.items():
        text = str(name)
        if len(text) > MAX_TEXT:
            return EventError(f"a field name is longer than {MAX_TEXT:,} characters")
        if is_secret_field(text):
            return EventError(
                f"event carries a secret field {text[:60]!r}: PIN, PUK and PASSCODE never belong in an event log"
            )
        if isinstance(value, str) and len(value) > MAX_TEXT:
            return EventError(f"field {text[:60]!r} is longer than {MAX_TEXT:,} characters")
        if not _is_unicode(text) or (isinstance(value, str) and not _is_unicode(value)):
            return EventError(f"field {text[:60]!r} holds a lone surrogate (\\ud800-\\udfff): not Unicode text")
    event_type = record.get("type")
    if event_type is None:
        return EventError("missing required field 'type'")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        shown = event_type if isinstance(event_type, str) else type(event_type).__name__
        return EventError(f"unknown event type {str(shown)[:60]!r}")
    for required in ("ts", "account"):
        if record.get(required) is None:
            return EventError(f"{event_type}: missing required field {required!r}")
    raw_ts = record["ts"]
    if isinstance(raw_ts, str):
        try:
            ts = parse_instant(raw_ts)
        except TimeFormatError as exc:
            return EventError(f"field 'ts': {exc}")
    elif epoch_ts and isinstance(raw_ts, int) and not isinstance(raw_ts, bool):
        if not MIN_INSTANT <= raw_ts <= MAX_INSTANT:
            return EventError(f"field 'ts' lies outside {INSTANT_RANGE}")
        ts = raw_ts
    else:
        return EventError(f"field 'ts' must be an RFC 3339 string, got {type(raw_ts).__name__}")
    account = record["account"]
    if not isinstance(account, str) or not _NAME_RE.fullmatch(account):
        return EventError("field 'account' must be 1-128 characters of [A-Za-z0-9._:@/-]")
    given_id = record.get("id")
    if given_id is not None and (not isinstance(given_id, str) or not 0 < len(given_id) <= 200):
        return EventError("field 'id' must be a non-empty string of at most 200 characters")

    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    specs = FIELD_SPECS.get(event_type)
    for name, value in record.items():
        if name in COMMON_FIELDS:
            continue
        if specs is None:
            problem = _scalar_problem(str(name)[:60], value)
            if problem is not None:
                return EventError(f"{event_type}: {problem}")
            extra[name] = value
            continue
        spec = specs.get(name)
        if spec is None:
            hint = " (a pandas index: write the log with index=False)" if _PANDAS_INDEX.fullmatch(str(name)) else ""
            return EventError(f"{event_type}: unknown field {str(name)[:60]!r}{hint}")
        if value is None:
            continue
        normalised, reason = _check_value(name, spec.kind, value)
        if reason is not None:
            return EventError(f"{event_type}: {reason}")
        values[name] = normalised
    if specs is not None:
        for name, spec in specs.items():
            if spec.required and name not in values:
                return EventError(f"{event_type}: missing required field {name!r}")
        if event_type in ("sms.sent", "mono.message"):
            values.setdefault("count", 1)
    extra_text = encode_extra(extra)
    if given_id is None:
        given_id = content_id(event_content(ts, event_type, account, values, extra_text))
    return Event(
        ts=ts, type=event_type, account=account, id=given_id, extra=extra_text, source=source, line=line, **values
    )
