"""What the service itself exports: Sakura Cloud API responses read into mgwsim events.

Each file is one API response saved as JSON (as ``usacloud … -o json`` or the API returns it),
recognised by its shape — the shapes of the official Go client (sacloud/iaas-api-go, ``naked/``):

* the **SIM list** (``CommonServiceItems``, or one ``CommonServiceItem``): each SIM's
  ``Status.sim`` with ``iccid``, ``registered``, ``registered_date``, ``imei_lock`` and
  ``traffic_bytes_of_current_month`` (``uplink_bytes``/``downlink_bytes`` as decimal strings, or
  ``[]`` when there is none);
* a SIM's **session log** (``logs``: ``date``, ``session_status``, ``resource_id``, ``imei``, ``imsi``);
* a SIM's **traffic metrics** (``Data``: RFC 3339 instant → ``UplinkBps``/``DownlinkBps``);
* **mobile gateways** (``Appliances``, or one ``Appliance``, of ``Class`` ``mobilegateway``:
  ``Settings.MobileGateway.InternetConnection.Enabled``, ``Interfaces``, ``CreatedAt``).

What becomes of them (:func:`import_documents`):

* a registration per SIM at its ``registered_date`` (``sim.registered``);
* ``traffic_bytes_of_current_month`` is the volume of the JST month of the time the list was
  fetched, up to that time: the latest snapshot of a SIM in a month becomes that month's
  ``sim.traffic`` (id ``sacloud:ICCID:YYYY-MM:snapshot``), exact when taken at the month's end;
* for a month without a snapshot, the metrics give an estimate — each sample's bits per second
  times the time to the next sample, over 8 — as one ``sim.traffic`` whose id ends in
  ``:estimated-from-metrics``, so the evidence of every charge says it is an estimate;
* session log lines become ``session.created``/``session.deleted`` diagnostics; a mobile gateway
  becomes ``gateway.created`` at its ``CreatedAt`` and a ``gateway.internet`` state.

A SIM document may carry ``Remark.PassCode``: it is never read into anything — no event, log line
or message holds it. An unknown or malformed document is an :class:`SacloudImportError` naming the file
and the JSON path; nothing is written then.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from metering.events import Event, EventError, event_from_mapping
from metering.textfile import read_text
from metering.timeutil import TimeFormatError, format_instant, format_month, month_of_instant, parse_instant

GATEWAY_CLASS: Final = "mobilegateway"
SNAPSHOT: Final = "snapshot"
ESTIMATED: Final = "estimated-from-metrics"
_CREATED: Final = ("created", "up", "attached", "connected")
_DELETED: Final = ("deleted", "down", "detached", "disconnected")


class SacloudImportError(Exception):
    """A document that cannot be imported: one line naming the file, the JSON path and the reason."""


@dataclass(frozen=True)
class Fetched:
    """One response file and the time it was fetched (epoch microseconds)."""

    path: Path
    at: int


@dataclass
class _Sim:
    iccid: str
    resource: str
    registered_at: int | None
    snapshots: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    """JST month → (fetched at, uplink bytes, downlink bytes) of the latest snapshot in that month."""


@dataclass
class _Found:
    sims: dict[str, _Sim] = field(default_factory=dict)
    logs: list[tuple[Fetched, list[Any]]] = field(default_factory=list)
    metrics: list[tuple[Fetched, Mapping[str, Any]]] = field(default_factory=list)
    gateways: list[tuple[Fetched, str, Mapping[str, Any]]] = field(default_factory=list)


def _where(path: Path, pointer: str) -> str:
    return f"{path}: {pointer}"


def _object(value: Any, path: Path, pointer: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SacloudImportError(f"{_where(path, pointer)}: expected a JSON object, got {type(value).__name__}")
    return value


def _string(value: Any, path: Path, pointer: str) -> str:
    if not isinstance(value, str) or not value:
        raise SacloudImportError(f"{_where(path, pointer)}: expected a non-empty string")
    return value


def _instant(value: Any, path: Path, pointer: str) -> int:
    text = _string(value, path, pointer)
    try:
        return parse_instant(text)
    except TimeFormatError as exc:
        raise SacloudImportError(f"{_where(path, pointer)}: {exc}") from None


def _bytes(value: Any, path: Path, pointer: str) -> int:
    """A byte count as the API writes it: a decimal string (``types.StringNumber``), or a JSON integer."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise SacloudImportError(f"{_where(path, pointer)}: expected a byte count as a decimal string")
    text = str(value)
    if not text.isdigit() or not text.isascii():
        raise SacloudImportError(f"{_where(path, pointer)}: {text[:40]!r} is not a whole number of bytes")
    return int(text)


def _bps(value: Any, path: Path, pointer: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise SacloudImportError(f"{_where(path, pointer)}: expected a number of bits per second")
    number = Decimal(value)
    if not number.is_finite() or number < 0:
        raise SacloudImportError(f"{_where(path, pointer)}: expected a finite number >= 0")
    return number


def read_documents(files: Sequence[Fetched]) -> _Found:
    """Read and recognise every file (see the module); the SIM lists first, so others can name their SIMs."""
    found = _Found()
    documents = []
    for fetched in files:
        try:
            text = read_text(fetched.path)
        except ValueError as exc:
            raise SacloudImportError(str(exc)) from None
        try:
            document = json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise SacloudImportError(f"{fetched.path}:{exc.lineno}: not JSON ({exc.msg})") from None
        except ValueError as exc:  # NaN or Infinity, which are not JSON numbers
            raise SacloudImportError(f"{fetched.path}: not JSON ({exc})") from None
        documents.append((fetched, _object(document, fetched.path, "$")))
    _check_pages(documents)
    for fetched, document in documents:
        if "CommonServiceItems" in document or "CommonServiceItem" in document:
            _read_sims(fetched, document, found)
    for fetched, document in documents:
        if "CommonServiceItems" in document or "CommonServiceItem" in document:
            continue
        if "logs" in document:
            logs = document["logs"]
            if not isinstance(logs, list):
                raise SacloudImportError(f"{_where(fetched.path, '$.logs')}: expected a list of session log lines")
            found.logs.append((fetched, logs))
        elif "Data" in document:
            found.metrics.append((fetched, _object(document["Data"], fetched.path, "$.Data")))
        elif "Appliances" in document or "Appliance" in document:
            _read_gateways(fetched, document, found)
        else:
            keys = ", ".join(sorted(map(str, document))[:5]) or "none"
            raise SacloudImportError(
                f"{fetched.path}: $: not a SIM list, session log, traffic metrics or mobile gateway response "
                f"(top-level keys: {keys})"
            )
    return found


def _check_pages(documents: Sequence[tuple[Fetched, Mapping[str, Any]]]) -> None:
    """Refuse a list given in part: a page (``From``, ``Total``) whose other pages of its fetch time are missing.

    The API pages a long list; one page alone would import its SIMs or gateways only, and the
    others would go unbilled without a word.

    Raises:
        SacloudImportError: Naming the first page of an incomplete list and the items missing.
    """
    pages: dict[tuple[str, int], list[tuple[Fetched, int, int, int]]] = {}
    for fetched, document in documents:
        many = next((key for key in ("CommonServiceItems", "Appliances") if key in document), None)
        if many is None or "Total" not in document or not isinstance(document[many], list):
            continue
        total = _whole(document["Total"], fetched.path, "$.Total")
        start = _whole(document.get("From", 0), fetched.path, "$.From")
        pages.setdefault((many, fetched.at), []).append((fetched, start, len(document[many]), total))
    for (many, at), given in pages.items():
        first, start, count, total = given[0]
        covered = 0
        for _, begin, size, _ in sorted(given, key=lambda page: page[1]):
            if begin > covered:
                break
            covered = max(covered, begin + size)
        if covered < total:
            gap_end = min([begin for _, begin, _, _ in given if begin > covered] + [total])
            raise SacloudImportError(
                f"{first.path}: $.{many}: items {start + 1} to {start + count} of {total}, a page of the list; "
                f"the pages fetched at {format_instant(at)} miss items {covered + 1} to {gap_end}: "
                "give every page (or the list whole)"
            )


def _whole(value: Any, path: Path, pointer: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SacloudImportError(f"{_where(path, pointer)}: expected a whole number, got {str(value)[:20]!r}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _items(document: Mapping[str, Any], many: str, one: str, path: Path) -> list[tuple[str, Mapping[str, Any]]]:
    if many in document:
        items = document[many]
        if not isinstance(items, list):
            raise SacloudImportError(f"{_where(path, '$.' + many)}: expected a list")
        return [(f"$.{many}[{index}]", _object(item, path, f"$.{many}[{index}]")) for index, item in enumerate(items)]
    return [(f"$.{one}", _object(document[one], path, f"$.{one}"))]


def _read_sims(fetched: Fetched, document: Mapping[str, Any], found: _Found) -> None:
    path = fetched.path
    month = month_of_instant(fetched.at)
    for pointer, item in _items(document, "CommonServiceItems", "CommonServiceItem", path):
        provider = item.get("Provider")
        if isinstance(provider, dict) and provider.get("Class") not in (None, "sim"):
            continue  # another common service item (DNS, GSLB …) in the same list
        status = _object(item.get("Status"), path, pointer + ".Status")
        sim = _object(status.get("sim"), path, pointer + ".Status.sim")
        iccid = _string(sim.get("iccid", status.get("ICCID")), path, pointer + ".Status.sim.iccid")
        if not iccid.isdigit() or not 18 <= len(iccid) <= 20:
            raise SacloudImportError(f"{_where(path, pointer + '.Status.sim.iccid')}: not an ICCID of 18-20 digits")
        resource = str(item.get("ID", sim.get("resource_id", iccid)))
        registered = sim.get("registered", True)
        if not isinstance(registered, bool):
            raise SacloudImportError(f"{_where(path, pointer + '.Status.sim.registered')}: expected true or false")
        at = None
        if registered:
            at = _instant(sim.get("registered_date"), path, pointer + ".Status.sim.registered_date")
        record = found.sims.setdefault(iccid, _Sim(iccid, resource, at))
        if record.registered_at is None:
            record.registered_at = at
        traffic = sim.get("traffic_bytes_of_current_month")
        if traffic in (None, []):
            continue
        traffic = _object(traffic, path, pointer + ".Status.sim.traffic_bytes_of_current_month")
        up = _bytes(
            traffic.get("uplink_bytes", "0"), path, pointer + ".Status.sim.traffic_bytes_of_current_month.uplink_bytes"
        )
        down = _bytes(
            traffic.get("downlink_bytes", "0"),
            path,
            pointer + ".Status.sim.traffic_bytes_of_current_month.downlink_bytes",
        )
        held = record.snapshots.get(month)
        if held is None or held[0] < fetched.at:
            record.snapshots[month] = (fetched.at, up, down)


def _read_gateways(fetched: Fetched, document: Mapping[str, Any], found: _Found) -> None:
    for pointer, item in _items(document, "Appliances", "Appliance", fetched.path):
        if item.get("Class") != GATEWAY_CLASS:
            continue
        found.gateways.append((fetched, pointer, item))


def _sim_of(found: _Found, fetched: Fetched, resource: str | None, pointer: str) -> _Sim:
    """The SIM a session log or metrics file is about: by resource id, else by an id in its file name."""
    for sim in found.sims.values():
        if resource is not None and resource in (sim.resource, sim.iccid):
            return sim
    if resource is None:
        named = [
            sim for sim in found.sims.values() if sim.iccid in fetched.path.name or sim.resource in fetched.path.name
        ]
        if len(named) == 1:
            return named[0]
    raise SacloudImportError(
        f"{_where(fetched.path, pointer)}: names no SIM of the SIM lists given"
        + (f" (resource {resource[:40]!r})" if resource else "; put its ICCID or resource ID in the file name")
    )


def import_documents(files: Sequence[Fetched], account: str) -> list[Event]:
    """The events of the responses, validated, in time order (see the module).

    Raises:
        SacloudImportError: For an unknown or malformed document, or an event the format refuses.
    """
    found = read_documents(files)
    records: list[tuple[dict[str, Any], Fetched | None, str]] = []

    def add(record: dict[str, Any], fetched: Fetched | None = None, pointer: str = "$") -> None:
        records.append(({"account": account, **record}, fetched, pointer))

    for iccid, sim in sorted(found.sims.items()):
        if sim.registered_at is not None:
            add(
                {
                    "ts": format_instant(sim.registered_at),
                    "type": "sim.registered",
                    "id": f"sacloud:{iccid}:registered",
                    "sim": iccid,
                }
            )
        for month, (at, up, down) in sorted(sim.snapshots.items()):
            add(_traffic(iccid, month, at, up, down, SNAPSHOT))
    snapshotted = {(iccid, month) for iccid, sim in found.sims.items() for month in sim.snapshots}
    for fetched, data in found.metrics:
        sim = _sim_of(found, fetched, None, "$.Data")
        for month, (last, up, down) in _estimates(fetched.path, data).items():
            if (sim.iccid, month) not in snapshotted:
                add(_traffic(sim.iccid, month, last, up, down, ESTIMATED))
    for fetched, logs in found.logs:
        for index, line in enumerate(logs):
            pointer = f"$.logs[{index}]"
            entry = _object(line, fetched.path, pointer)
            resource = entry.get("resource_id")
            sim = _sim_of(found, fetched, str(resource) if resource is not None else None, pointer + ".resource_id")
            at = _instant(entry.get("date"), fetched.path, pointer + ".date")
            status = _string(entry.get("session_status"), fetched.path, pointer + ".session_status").lower()
            if status not in _CREATED + _DELETED:
                raise SacloudImportError(
                    f"{_where(fetched.path, pointer + '.session_status')}: unknown session status {status[:30]!r}"
                )
            kind = "session.created" if status in _CREATED else "session.deleted"
            extra = {key: str(entry[key]) for key in ("imei", "imsi") if isinstance(entry.get(key), (str, int))}
            cause = {} if kind == "session.created" else {"cause": "session_log"}
            add(
                {"ts": format_instant(at), "type": kind, "id": f"sacloud:{sim.iccid}:{kind}:{at}", "sim": sim.iccid,
                 **extra, **cause},
                fetched,
                pointer,
            )  # fmt: skip
    for fetched, pointer, item in found.gateways:
        gateway = _string(str(item.get("ID", "")), fetched.path, pointer + ".ID")
        created = _instant(item.get("CreatedAt"), fetched.path, pointer + ".CreatedAt")
        add(
            {
                "ts": format_instant(created),
                "type": "gateway.created",
                "id": f"sacloud:gw:{gateway}:created",
                "gateway": gateway,
            }
        )
        settings = item.get("Settings") or {}
        setting = (settings.get("MobileGateway") or {}) if isinstance(settings, dict) else {}
        connection = setting.get("InternetConnection") if isinstance(setting, dict) else None
        if isinstance(connection, dict) and "Enabled" in connection:
            enabled = str(connection["Enabled"]).lower()
            if enabled not in ("true", "false"):
                raise SacloudImportError(
                    f"{_where(fetched.path, pointer + '.Settings.MobileGateway.InternetConnection.Enabled')}: "
                    "expected True or False"
                )
            state = "on" if enabled == "true" else "off"
            add(
                {"ts": format_instant(fetched.at), "type": "gateway.internet",
                 "id": f"sacloud:gw:{gateway}:internet:{fetched.at}", "gateway": gateway, "state": state},
                fetched,
                pointer,
            )  # fmt: skip
    events = []
    for record, origin, pointer in records:
        result = event_from_mapping(record, str(origin.path) if origin else "")
        if isinstance(result, EventError):
            where = f"{origin.path}: {pointer}" if origin is not None else "the SIM list"
            raise SacloudImportError(f"{where}: {result.reason}")
        events.append(result)
    return sorted(events, key=lambda event: (event.ts, event.type, event.id))


def _traffic(iccid: str, month: int, at: int, up: int, down: int, how: str) -> dict[str, Any]:
    return {
        "ts": format_instant(at),
        "type": "sim.traffic",
        "id": f"sacloud:{iccid}:{format_month(month)}:{how}",
        "sim": iccid,
        "up_bytes": up,
        "down_bytes": down,
        "route": "closed",
    }


def _estimates(path: Path, data: Mapping[str, Any]) -> dict[int, tuple[int, int, int]]:
    """Per JST month: the last sample's instant and the bytes estimated from bits per second.

    Each sample's rate holds until the next sample; the last one holds for the median step (a
    one-sample series for none). Bytes are bits / 8, rounded to the nearest byte once per month.
    """
    samples = []
    for key, value in data.items():
        pointer = f"$.Data[{json.dumps(key)}]"
        at = _instant(key, path, pointer)
        sample = _object(value, path, pointer)
        up = _bps(sample.get("UplinkBps", 0), path, pointer + ".UplinkBps")
        down = _bps(sample.get("DownlinkBps", 0), path, pointer + ".DownlinkBps")
        samples.append((at, up, down))
    samples.sort()
    steps = sorted(later[0] - earlier[0] for earlier, later in itertools.pairwise(samples))
    last_step = steps[len(steps) // 2] if steps else 0
    months: dict[int, list[Any]] = {}
    for index, (at, up, down) in enumerate(samples):
        step = (samples[index + 1][0] - at) if index + 1 < len(samples) else last_step
        seconds = Decimal(step) / Decimal(1_000_000)
        held = months.setdefault(month_of_instant(at), [at, Decimal(0), Decimal(0)])
        held[0] = at
        held[1] += up * seconds / 8
        held[2] += down * seconds / 8
    result = {}
    for month, (at, up, down) in months.items():
        try:
            result[month] = (
                at,
                int(up.quantize(Decimal(1), ROUND_HALF_EVEN)),
                int(down.quantize(Decimal(1), ROUND_HALF_EVEN)),
            )
        except InvalidOperation:
            raise SacloudImportError(f"{path}: $.Data: the estimate of {format_month(month)} is too large") from None
    return result


def fetched_files(arguments: Iterable[str], at: str | None) -> tuple[list[Fetched], list[str]]:
    """``FILE`` or ``FILE@TIME`` arguments with their fetch times, and notes for people on the defaults taken.

    A file's time is its own ``@TIME``, else ``--at``, else its modification time (said in a note).

    Raises:
        SacloudImportError: For a time that is not RFC 3339 with an offset, or a file that does not exist.
    """
    default = None
    if at is not None:
        try:
            default = parse_instant(at)
        except TimeFormatError as exc:
            raise SacloudImportError(f"--at: {exc}") from None
    files: list[Fetched] = []
    notes: list[str] = []
    for argument in arguments:
        moment: int | None
        name, separator, when = argument.rpartition("@") if "@" in argument else (argument, "", "")
        if separator and not Path(argument).exists():
            path = Path(name)
            try:
                moment = parse_instant(when)
            except TimeFormatError as exc:
                raise SacloudImportError(f"{argument}: the time after @: {exc}") from None
        else:
            path = Path(argument)
            moment = default
        if not path.is_file():
            raise SacloudImportError(f"{path}: no such file")
        if moment is None:
            moment = math.floor(path.stat().st_mtime * 1_000_000)
            notes.append(f"{path}: fetched at {format_instant(moment)} (its modification time; give FILE@TIME or --at)")
        files.append(Fetched(path, moment))
    return files, notes
