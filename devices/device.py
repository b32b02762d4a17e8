"""The device around a SIM: power, PIN entry, attach with back-off, sessions — a pure state machine.

Every transition is one entry of :data:`TRANSITIONS`, ``(state, event) -> target state``, in the
manner of h11's ``_state.py``: an event the table does not list for the current state raises
:class:`IllegalDeviceEvent` and changes nothing (a :class:`DeviceMachine` is immutable). The
machine knows nothing of time; the engines drive it (the reference engine steps it in SimPy, event
by event) and both take the device's timers from here:

* the firmware retries a wrong PIN every :data:`PIN_RETRY_S` and, once the PIN is blocked, enters
  the PUK after the fleet's delay, retrying a wrong PUK every :data:`PUK_RETRY_S`;
* a refused attach is retried after T3411 (:data:`T3411_S`, 10 s); after
  :data:`ATTACH_ATTEMPTS` refusals in a row the device waits T3402 (:data:`T3402_S`, 12 min) —
  3GPP TS 24.301 §5.5.1.2.6 (attach attempt counter, timers T3411 and T3402).

The SIM card itself (PIN and PUK counters, blocking) is :mod:`devices.sim_card`'s machine; this
one names what the device does around it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Final

PIN_RETRY_S: Final = 10
"""Seconds between the firmware's attempts at a (wrong) PIN."""
PUK_RETRY_S: Final = 60
"""Seconds between the firmware's attempts at a (wrong) PUK."""
T3411_S: Final = 10
"""TS 24.301 T3411: seconds to the next attach attempt after a refusal."""
T3402_S: Final = 12 * 60
"""TS 24.301 T3402: seconds to wait once :data:`ATTACH_ATTEMPTS` attempts in a row were refused."""
ATTACH_ATTEMPTS: Final = 5
"""TS 24.301 attach attempt counter limit: refusals in a row before T3402 instead of T3411."""


class DeviceState(enum.Enum):
    """Where a device is."""

    OFF = "off"
    """Unpowered (also before its first power-on)."""
    PIN_ENTRY = "pin_entry"
    """Powered; the card asks for its PIN and the firmware enters one."""
    PUK_WAIT = "puk_wait"
    """The PIN is blocked; the PUK is due (or will never come)."""
    SEARCHING = "searching"
    """The card is ready; the device looks for coverage and attaches."""
    BACKING_OFF = "backing_off"
    """An attach was refused; the device waits T3411 or T3402."""
    IN_SESSION = "in_session"
    """Attached, with a data session open."""
    OUT = "out"
    """The SIM cannot be used (blocked for good, or without a way to unblock it)."""


class DeviceEvent(enum.Enum):
    """What happens to a device."""

    POWER_ON = "power_on"
    POWER_OFF = "power_off"
    CARD_READY = "card_ready"
    """The card accepts commands (no PIN, or the right one)."""
    PIN_REJECTED = "pin_rejected"
    """A wrong PIN, with tries left."""
    PIN_BLOCKED = "pin_blocked"
    """A wrong PIN, the last try: the card wants its PUK."""
    PUK_ACCEPTED = "puk_accepted"
    """The PUK and a new PIN unblocked the card."""
    SIM_OUT = "sim_out"
    """The card is out of use (no PUK coming, or the PUK tries ran out)."""
    ATTACH_REFUSED = "attach_refused"
    RETRY = "retry"
    """The back-off timer expired."""
    SESSION_OPENED = "session_opened"
    SESSION_CLOSED = "session_closed"
    """The session ended (coverage lost, gateway change, mass traffic, …): the device searches again."""


S, E = DeviceState, DeviceEvent
TRANSITIONS: Final[dict[tuple[DeviceState, DeviceEvent], DeviceState]] = {
    (S.OFF, E.POWER_ON): S.PIN_ENTRY,
    (S.PIN_ENTRY, E.CARD_READY): S.SEARCHING,
    (S.PIN_ENTRY, E.PIN_REJECTED): S.PIN_ENTRY,
    (S.PIN_ENTRY, E.PIN_BLOCKED): S.PUK_WAIT,
    (S.PIN_ENTRY, E.SIM_OUT): S.OUT,
    (S.PUK_WAIT, E.PUK_ACCEPTED): S.SEARCHING,
    (S.PUK_WAIT, E.SIM_OUT): S.OUT,
    (S.SEARCHING, E.ATTACH_REFUSED): S.BACKING_OFF,
    (S.SEARCHING, E.SESSION_OPENED): S.IN_SESSION,
    (S.BACKING_OFF, E.RETRY): S.SEARCHING,
    (S.IN_SESSION, E.SESSION_CLOSED): S.SEARCHING,
    **{(state, E.POWER_OFF): S.OFF for state in S if state is not S.OFF},
}
"""Every legal transition: ``(state, event) -> target state``."""
del S, E


class IllegalDeviceEvent(Exception):
    """An event the device cannot take in its state (the machine is unchanged)."""


@dataclass(frozen=True, slots=True)
class DeviceMachine:
    """A device's state and its count of attach refusals in a row.

    Attributes:
        state: Where the device is.
        refusals: Attach attempts refused in a row (reset by a session or a power-off).
    """

    state: DeviceState = DeviceState.OFF
    refusals: int = 0

    def apply(self, event: DeviceEvent) -> DeviceMachine:
        """The machine after ``event``.

        Raises:
            IllegalDeviceEvent: If ``event`` is not legal in :attr:`state` (nothing changes).
        """
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            raise IllegalDeviceEvent(f"device in state {self.state.value} cannot take {event.value}")
        if event is DeviceEvent.ATTACH_REFUSED:
            return replace(self, state=target, refusals=self.refusals + 1)
        if event in (DeviceEvent.SESSION_OPENED, DeviceEvent.POWER_OFF):
            return DeviceMachine(target)
        return replace(self, state=target)

    def retry_delay(self) -> int:
        """Seconds until the next attach attempt, backing off after the refusals so far."""
        return attach_retry_delay(self.refusals)


def attach_retry_delay(refusals: int) -> int:
    """Seconds to the next attach attempt after ``refusals`` refusals in a row (T3411; T3402 every 5th)."""
    return T3402_S if refusals % ATTACH_ATTEMPTS == 0 else T3411_S


def attach_cycle_s() -> int:
    """Seconds of one full cycle of refused attempts' back-off, whatever its phase (760 s)."""
    return T3402_S + (ATTACH_ATTEMPTS - 1) * T3411_S


def wrong_code(code: str) -> str:
    """A code of the same length that is not ``code`` (what a misconfigured firmware sends)."""
    return "".join(str((int(digit) + 1) % 10) for digit in code)
