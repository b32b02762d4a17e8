"""The Mono Platform's MQTT service adapter: platform messages out to a broker, and back in as events.

A device's messages through the Mono Platform reach the customer's systems through a service
adapter. Here the adapter is MQTT (through aiomqtt, on a real broker): each platform message is
published at QoS 1 as the platform's object JSON::

    {"id": "...", "device_id": "...", "account": "...", "type": "object",
     "timestamp_device": "...", "timestamp_platform": "...",
     "payload": [{"tag": "seq", "type": "uint", "value": 1}, {"tag": "data", "type": "bytes", "value": "…"}]}

to ``PREFIX/ACCOUNT/DEVICE_ID/object``. :func:`subscribe_messages` is the other end
(``mgwsim meter-mqtt``): it subscribes at QoS 1 with a persistent session, turns every distinct
message id into one ``mono.message`` event, and survives broker restarts. Delivery is at least
once on the wire and exactly once in the log: a message republished after a reconnect has the
same id, and both ends drop what they have already seen.

Passwords are taken from the environment (:data:`PASSWORD_VARIABLE`), never from the command
line, and never appear in a message or log line.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from gateway.journal import Journal
from metering.events import DuplicateKeyError, EventError, decode_object, event_from_mapping

_QUIET = logging.getLogger("mgwsim.mqtt")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False  # aiomqtt warns on every publish beyond ten in flight: that is the point here
_QUIET.setLevel(logging.ERROR)
PASSWORD_VARIABLE: Final = "MGWSIM_MQTT_PASSWORD"
"""Environment variable holding the MQTT password (with ``--mqtt-username``)."""
PAYLOAD_BYTES: Final = 16
"""Bytes of the ``data`` entry of a published message (a platform message's typical payload)."""
IN_FLIGHT: Final = 32
"""QoS 1 publishes awaiting their PUBACK at once (aiomqtt and paho scan the in-flight ones per call:
more costs time per message, fewer leaves the loopback round trip idle)."""
BATCH: Final = 5_000
"""Messages handed to the client at a time (progress is reported per batch)."""
MAX_BACKOFF_S: Final = 30.0
"""The longest wait between two connection attempts (the back-off doubles up to it)."""


class MqttAdapterError(Exception):
    """The broker cannot be used (one line, never with the password)."""


def check_ca_file(path: Path) -> None:
    """Load the CA certificates of ``--mqtt-ca`` once, before any connection, so that a bad file is named.

    Raises:
        MqttAdapterError: When the file is missing, a folder, or holds no certificate (PEM) TLS can load.
        OSError: When it exists but cannot be read (permissions, an I/O error), with its name.
    """
    if not path.exists():
        raise MqttAdapterError(f"{path}: no such file")
    if path.is_dir():
        raise MqttAdapterError(f"{path}: is a folder, not a file of CA certificates")
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise MqttAdapterError(f"{path}: no CA certificate TLS can load (PEM expected; {exc.reason or exc})") from None
    except OSError as exc:  # ssl does not say which file
        raise OSError(exc.errno, exc.strerror, str(path)) from None


@dataclass(frozen=True)
class Broker:
    """Where and how to connect.

    Attributes:
        host: Broker host.
        port: Broker port.
        prefix: Topic prefix.
        username: User name, if any.
        password: Password, if any (from the environment).
        tls: Connect with TLS.
        ca_file: CA certificates to verify the broker with (TLS).
        attempts: Connection attempts in a row before giving up (a broker absent at start, or
            gone for good).
        backoff_s: Wait after the first failed attempt; it doubles after each further one, up to
            :data:`MAX_BACKOFF_S`.
    """

    host: str
    port: int
    prefix: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: Path | None = None
    attempts: int = 5
    backoff_s: float = 0.25

    @classmethod
    def from_url(
        cls,
        url: str,
        username: str | None = None,
        ca_file: Path | None = None,
        attempts: int = 5,
        backoff_s: float = 0.25,
    ) -> Broker:
        """A broker from ``mqtt://HOST:PORT/PREFIX`` or ``mqtts://…`` (TLS).

        Raises:
            MqttAdapterError: For a URL that is not one of those.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise MqttAdapterError(f"{url!r} is not mqtt://HOST[:PORT][/PREFIX] or mqtts://…")
        if parts.password is not None:
            raise MqttAdapterError(f"put the password in ${PASSWORD_VARIABLE}, not in the URL")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise MqttAdapterError(f"{parts.netloc!r}: the port is not a number") from None
        return cls(
            host=parts.hostname,
            port=port,
            prefix=parts.path.strip("/") or "mono",
            username=username or parts.username,
            password=os.environ.get(PASSWORD_VARIABLE) or None,
            tls=parts.scheme == "mqtts" or ca_file is not None,
            ca_file=ca_file,
            attempts=attempts,
            backoff_s=backoff_s,
        )

    def retry_delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row (exponential back-off)."""
        return float(min(self.backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S))

    def describe(self) -> str:
        """Where, for messages (without credentials)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def client(self, identifier: str | None = None, clean_session: bool = True) -> Any:
        """An aiomqtt client for this broker (not yet connected)."""
        import aiomqtt

        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        return aiomqtt.Client(
            self.host,
            self.port,
            logger=_QUIET,
            username=self.username,
            password=self.password,
            identifier=identifier,
            clean_session=clean_session,
            tls_context=context,
            max_inflight_messages=IN_FLIGHT,
            timeout=10,
        )


@dataclass(frozen=True, slots=True)
class PlatformMessage:
    """One message of a device through the platform."""

    id: str
    account: str
    device_id: str
    ts_us: int

    def topic(self, prefix: str) -> str:
        """Where it is published."""
        return f"{prefix}/{self.account}/{self.device_id}/object"

    def payload(self) -> bytes:
        """The platform's object JSON (built from a template: this is the adapter's hot path)."""
        seconds, micros = divmod(self.ts_us, 1_000_000)
        instant = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (f".{micros:06d}Z" if micros else "Z")
        sequence = int(self.id.rsplit("#", 1)[-1])
        return (
            f'{{"id":{json.dumps(self.id)},"device_id":{json.dumps(self.device_id)},'
            f'"account":{json.dumps(self.account)},"type":"object",'
            f'"timestamp_device":"{instant}","timestamp_platform":"{instant}",'
            f'"payload":[{{"tag":"seq","type":"uint","value":{sequence}}},'
            f'{{"tag":"data","type":"bytes","value":"{_DATA}"}}]}}'
        ).encode()


_DATA: Final = "00" * PAYLOAD_BYTES


def platform_messages(events: Iterable[Any]) -> Iterator[PlatformMessage]:
    """One message per counted platform message of the ``mono.message`` events of a log, in time order.

    A log is in log order (by account, then by time); the platform publishes as time goes, so
    the messages are put in time order (those of one instant in log order).
    """
    messages = [
        PlatformMessage(f"{event.id}#{number}", event.account, event.sim, event.ts)
        for event in events
        if event.type == "mono.message" and event.sim is not None
        for number in range(1, (event.count or 1) + 1)
    ]
    yield from sorted(messages, key=lambda message: message.ts_us)


def _credentials_refused(exc: BaseException) -> bool:
    """Whether the broker refused the user name or password (CONNACK 4 or 5, in paho's words)."""
    text = str(exc)
    return "ot authorized" in text or "bad user name or password" in text.lower() or "code:5" in text.replace(" ", "")


def _connection_error(broker: Broker, exc: BaseException, attempts: int = 0) -> MqttAdapterError:
    """One line on a failed connection (``attempts``: how many were made, when giving up)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if broker.password:
        text = text.replace(broker.password, "***")
    if _credentials_refused(exc):
        return MqttAdapterError(f"{broker.describe()}: the broker refused the user name or password")
    tried = f" (gave up after {attempts} attempt{'s' if attempts != 1 else ''})" if attempts else ""
    return MqttAdapterError(f"{broker.describe()}: {text}{tried}")


RetryReport = Callable[[int, float, str], None]
"""Told of each failed connection attempt that will be retried: failures so far, the wait, why."""


async def _back_off(broker: Broker, exc: BaseException, failures: int, on_retry: RetryReport | None) -> None:
    """Wait before the next connection attempt, or give up after ``broker.attempts`` failures in a row.

    Raises:
        MqttAdapterError: When the attempts are used up.
    """
    if failures >= broker.attempts:
        raise _connection_error(broker, exc, failures) from None
    delay = broker.retry_delay(failures)
    if on_retry is not None:
        on_retry(failures, delay, str(_connection_error(broker, exc)))
    await asyncio.sleep(delay)


async def publish_messages(
    broker: Broker,
    messages: list[PlatformMessage],
    progress: Callable[[int], None] | None = None,
    on_retry: RetryReport | None = None,
) -> int:
    """Publish at QoS 1 until every message is acknowledged; return how many publishes it took.

    A lost connection is retried with back-off (``broker.retry_delay``); messages not yet
    acknowledged are published again (same id). Raises :class:`MqttAdapterError` when the broker
    stays unreachable for ``broker.attempts`` attempts in a row, or refuses the credentials.
    """
    import aiomqtt

    _quiet_lost_connections()
    pending = list(range(len(messages)))
    done = [False] * len(messages)
    calls = [0]
    failures = 0
    connected = False
    while pending or not connected:  # connect even with nothing to send: a wrong broker is an error
        try:
            async with broker.client() as client:
                connected = True
                failures = 0
                for first in range(0, len(pending), BATCH):
                    batch = pending[first : first + BATCH]
                    await _publish_batch(client, broker.prefix, messages, batch, done, calls)
                    if progress is not None:
                        progress(sum(done))
        except aiomqtt.MqttError as exc:
            if _credentials_refused(exc):
                raise _connection_error(broker, exc) from None
            failures += 1
            await _back_off(broker, exc, failures, on_retry)
        pending = [position for position in pending if not done[position]]
    return calls[0]


def _quiet_lost_connections() -> None:
    """Drop asyncio's "exception never retrieved" reports of aiomqtt futures a lost connection failed.

    The loss itself is handled (reconnect, publish again); the report would only alarm the user.
    """
    import aiomqtt

    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not isinstance(context.get("exception"), aiomqtt.MqttError):
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def _publish_batch(
    client: Any, prefix: str, messages: list[PlatformMessage], positions: list[int], done: list[bool], calls: list[int]
) -> None:
    """Publish ``positions`` with :data:`IN_FLIGHT` publishers awaiting PUBACKs; mark what was acknowledged."""
    queue = iter(positions)

    async def publisher() -> None:
        for position in queue:  # the publishers share one iterator: each message is taken once
            message = messages[position]
            calls[0] += 1
            await client.publish(message.topic(prefix), message.payload(), qos=1)
            done[position] = True

    tasks = [asyncio.ensure_future(publisher()) for _ in range(IN_FLIGHT)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # the connection is gone: stop the rest, and collect what they raised
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


MAX_PAYLOAD: Final = 1 << 20
"""A payload larger than this (1 MiB) is not a platform message: it becomes a dead letter."""
ACK_EVERY: Final = 16
"""Messages taken between two journal syncs at most (a broker sends only so many unacknowledged
ones at a time: mosquitto 20 by default); the journal is also synced whenever no message waits."""


@dataclass
class Subscription:
    """What a subscriber received: journaled events, redeliveries dropped, dead letters.

    Attributes:
        journal: Where accepted messages and dead letters are written before they are acknowledged.
        seen: Event ids of every message journaled (resumed ones too): one per (account, device, id).
        duplicates: Redeliveries dropped.
        rejected: Messages refused (dead letters) this run.
        reconnections: Connections lost and made again.
    """

    journal: Journal
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    rejected: int = 0
    reconnections: int = 0

    def __post_init__(self) -> None:
        """Know the messages of a resumed journal."""
        self.seen.update(event.id for event in self.journal.events)

    @property
    def events(self) -> list[Any]:
        """Every journaled event."""
        return self.journal.events

    def take(self, payload: Any, topic: str = "") -> None:
        """Take one received message: a new event, a redelivery, or a dead letter (with the reason)."""
        data = bytes(payload)
        found = _event_of(data)
        if isinstance(found, str):
            self.rejected += 1
            self.journal.refuse(topic, data, found, _id_of(data))
            return
        if found.id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(found.id)
        self.journal.append(found)


def message_event_id(account: str, device: str, message_id: str) -> str:
    """The event id of a platform message: one per (account, device, message id), never cut.

    ``mqtt|ACCOUNT|DEVICE|ID``: neither an account name nor an ICCID can hold ``|``, so two
    messages share an id only when all three are equal. Beyond the 200 characters an event id
    may have, the three are hashed (SHA-256) instead of cut.
    """
    plain = f"mqtt|{account}|{device}|{message_id}"
    if len(plain) <= 200:
        return plain
    digest = hashlib.sha256("\0".join((account, device, message_id)).encode()).hexdigest()
    return f"mqtt|sha256|{digest}"


async def subscribe_messages(
    broker: Broker,
    topic: str,
    identifier: str,
    journal: Journal,
    expect: int | None = None,
    idle_s: float = 10.0,
    ready: Callable[[], None] | None = None,
    on_retry: RetryReport | None = None,
    stop: asyncio.Event | None = None,
) -> Subscription:
    """Receive platform messages into the journal, until enough, none for a while, or ``stop``.

    It stops when ``expect`` distinct messages are journaled (resumed ones count), nothing arrived
    for ``idle_s`` seconds, or ``stop`` is set (SIGTERM): the messages taken so far are synced
    and acknowledged first. A message is acknowledged to the broker only after it is in the
    journal on disk (manual acknowledgement). A lost connection is retried with back-off
    (``broker.retry_delay``); after ``broker.attempts`` failed attempts in a row it raises
    :class:`MqttAdapterError`.

    The session is persistent (``identifier``, clean session off), so messages published while
    the subscriber or the broker was away, or taken but not acknowledged, are delivered again.
    """
    import aiomqtt

    _quiet_lost_connections()
    got = Subscription(journal)
    failures = 0
    last = time.monotonic()

    def enough() -> bool:
        return (expect is not None and len(got.seen) >= expect) or (stop is not None and stop.is_set())

    while not enough():
        client = broker.client(identifier, clean_session=False)
        client._client.manual_ack_set(True)  # acknowledged by us, once journaled (aiomqtt has no public way)
        taken: list[Any] = []
        acknowledge = functools.partial(_acknowledge, journal, client, taken)

        try:
            async with client:
                await client.subscribe(topic, qos=1)
                failures = 0
                if ready is not None:
                    ready()
                    ready = None
                messages = client.messages.__aiter__()
                # one pending read, waited on with a timeout but never cancelled by it: cancelling a
                # read that has just taken a message (asyncio.wait_for in Python 3.11) loses it
                pending: asyncio.Future[Any] | None = None
                try:
                    while not enough():
                        if pending is None:
                            pending = asyncio.ensure_future(messages.__anext__())
                        done, _ = await asyncio.wait({pending}, timeout=0.2)
                        if not done:
                            acknowledge()
                            if time.monotonic() - last > idle_s:
                                return got
                            continue
                        message, pending = pending.result(), None
                        last = time.monotonic()
                        got.take(message.payload, str(message.topic))
                        taken.append(message)
                        if len(taken) >= ACK_EVERY or client._queue.empty():
                            acknowledge()
                    acknowledge()
                    return got
                finally:
                    if pending is not None:  # (a message it holds is unacknowledged: the broker sends it again)
                        pending.cancel()
        except aiomqtt.MqttError as exc:
            # what was taken is journaled (the broker sends the unacknowledged again; they are dropped
            # as redeliveries); what still waits in the client's queue is left to the redelivery
            journal.sync()
            failures += 1
            got.reconnections += 1
            await _back_off(broker, exc, failures, on_retry)
    return got


def _acknowledge(journal: Journal, client: Any, taken: list[Any]) -> None:
    """Sync the journal, then acknowledge the messages taken since the last time."""
    journal.sync()
    for message in taken:
        client._client.ack(message.mid, message.qos)
    taken.clear()


def _id_of(payload: bytes) -> str | None:
    """The ``id`` of a refused payload, when it can be read cheaply (for the dead letter)."""
    try:
        body = decode_object(payload) if len(payload) <= MAX_PAYLOAD else None
    except (ValueError, RecursionError):
        return None
    return str(body["id"]) if isinstance(body, dict) and "id" in body else None


def _event_of(payload: bytes) -> Any:
    """The ``mono.message`` event of a received object JSON, or why it is not one (a string)."""
    if len(payload) > MAX_PAYLOAD:
        return f"payload of {len(payload):,} bytes is larger than a platform message ({MAX_PAYLOAD:,})"
    try:
        body = decode_object(payload)
    except RecursionError:
        return "JSON nested too deeply"
    except DuplicateKeyError as exc:
        return f"key {exc.key[:60]!r} appears twice"
    except ValueError as exc:
        return f"not JSON ({str(exc).splitlines()[0][:120]})"
    if not isinstance(body, dict):
        return "not a JSON object"
    if body.get("type", "object") != "object":
        return f"type {str(body.get('type'))[:40]!r} is not an object message"
    try:
        message_id, device, account = str(body["id"]), str(body["device_id"]), str(body["account"])
        stamp = body["timestamp_platform"]
        entries = body.get("payload", [])
        size = sum(
            len(str(entry.get("value", ""))) // 2
            for entry in entries
            if isinstance(entry, dict) and entry.get("type") == "bytes"
        )
    except (KeyError, TypeError, AttributeError) as exc:
        return f"not a platform object message (missing or odd {str(exc)[:60]})"
    if not message_id:
        return "empty message id"
    record = {
        "ts": stamp,
        "type": "mono.message",
        "account": account,
        "id": message_event_id(account, device, message_id),
        "sim": device,
        "count": 1,
        "bytes": size,
    }
    event = event_from_mapping(record)
    if isinstance(event, EventError):
        return event.reason.replace("field 'ts'", "timestamp_platform").replace("field 'sim'", "device_id")
    return event
