"""The SIM card as a pure state machine (ETSI TS 102 221, PIN1 and its PUK).

A card is an immutable value. :meth:`SimCard.apply` takes one :class:`Command` and returns the
next card and the card's answer (:class:`CardAnswer`): like a real UICC, a wrong PIN costs a try
(``63CX``: X tries left), three wrong PINs block the PIN (``6983``, "SIM-locked"), the PUK unblocks
it and sets a new PIN, and ten wrong PUKs make the card permanently unusable. Powering the card
off and on asks for the PIN again when PIN lock is enabled.

Every transition is in :data:`TRANSITIONS`; a command with no entry for the card's state raises
:class:`IllegalCommand` and, the card being immutable, leaves it unchanged.

The PIN and PUK (and the PASSCODE, see :class:`SimSecrets`) never leave this module: they are not
in any ``repr``, answer or exception message.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Final

PIN_TRIES: Final = 3
"""PIN retry counter after a reset (ETSI TS 102 221, PIN1)."""
PUK_TRIES: Final = 10
"""PUK (UNBLOCK PIN) retry counter."""


class CardState(Enum):
    """Where the card stands (its power is kept apart, in :attr:`SimCard.powered`)."""

    PIN_REQUIRED = "pin_required"
    READY = "ready"
    BLOCKED = "blocked"
    DEAD = "dead"


class Command(Enum):
    """What a device can ask of the card."""

    POWER_ON = "power_on"
    POWER_OFF = "power_off"
    VERIFY_PIN = "verify_pin"
    CHANGE_PIN = "change_pin"
    ENABLE_PIN = "enable_pin"
    DISABLE_PIN = "disable_pin"
    UNBLOCK_PIN = "unblock_pin"


class Status(Enum):
    """The card's answer, with the status words a UICC returns."""

    OK = "9000"
    WRONG = "63CX"
    BLOCKED = "6983"
    NOT_ALLOWED = "6985"


class IllegalCommand(Exception):
    """A command the card cannot take in its state; the card is unchanged."""


@dataclass(frozen=True, slots=True)
class SimSecrets:
    """The secrets of one SIM: PIN, PUK and PASSCODE. Never printed, never logged."""

    pin: str = field(repr=False)
    puk: str = field(repr=False)
    passcode: str = field(repr=False)

    def __repr__(self) -> str:
        """Nothing of the secrets."""
        return "SimSecrets(<hidden>)"


@dataclass(frozen=True, slots=True)
class CardAnswer:
    """The card's answer to one command.

    Attributes:
        status: OK, WRONG (a try was spent), BLOCKED, or NOT_ALLOWED.
        tries_left: The counter of the code the command used (PIN or PUK), after the command.
    """

    status: Status
    tries_left: int

    @property
    def ok(self) -> bool:
        """Whether the command succeeded."""
        return self.status is Status.OK


def _same(given: str | None, secret: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), secret.encode())


@dataclass(frozen=True, slots=True)
class SimCard:
    """An immutable SIM card: state, power, PIN lock setting, retry counters, secrets.

    Attributes:
        iccid: The card's ICCID (not a secret of the card; a secret of the user per Art. 45).
        state: See :class:`CardState`.
        powered: Whether the card is powered.
        pin_enabled: Whether PIN lock is enabled.
        pin_tries: PIN tries left.
        puk_tries: PUK tries left.
    """

    iccid: str
    secrets: SimSecrets = field(repr=False)
    state: CardState = CardState.READY
    powered: bool = False
    pin_enabled: bool = False
    pin_tries: int = PIN_TRIES
    puk_tries: int = PUK_TRIES

    def __repr__(self) -> str:
        """The card without its secrets."""
        return (
            f"SimCard(iccid={self.iccid!r}, state={self.state.value}, powered={self.powered}, "
            f"pin_enabled={self.pin_enabled}, pin_tries={self.pin_tries}, puk_tries={self.puk_tries})"
        )

    def apply(
        self, command: Command, code: str | None = None, new_pin: str | None = None
    ) -> tuple[SimCard, CardAnswer]:
        """Apply one command.

        Args:
            command: The command.
            code: The PIN (verify, enable, disable, change: the old PIN) or the PUK (unblock).
            new_pin: The new PIN (change, unblock).

        Returns:
            The next card and the card's answer.

        Raises:
            IllegalCommand: When the command is not possible in the card's state (card unchanged).
        """
        if not self.powered and command is not Command.POWER_ON:
            raise IllegalCommand(f"{command.value} on a card that is not powered")
        handler = TRANSITIONS.get((self.state if self.powered else None, command))
        if handler is None:
            where = self.state.value if self.powered else "powered off"
            raise IllegalCommand(f"{command.value} is not possible when the card is {where}")
        return handler(self, code, new_pin)


Handler = Callable[[SimCard, str | None, str | None], tuple[SimCard, CardAnswer]]


def _power_on(card: SimCard, _code: str | None, _new: str | None) -> tuple[SimCard, CardAnswer]:
    state: CardState
    if card.state in (CardState.BLOCKED, CardState.DEAD):
        state = card.state
    else:
        state = CardState.PIN_REQUIRED if card.pin_enabled else CardState.READY
    return replace(card, powered=True, state=state), CardAnswer(Status.OK, card.pin_tries)


def _power_off(card: SimCard, _code: str | None, _new: str | None) -> tuple[SimCard, CardAnswer]:
    return replace(card, powered=False), CardAnswer(Status.OK, card.pin_tries)


def _check_pin(card: SimCard, code: str | None, success: SimCard) -> tuple[SimCard, CardAnswer]:
    """Spend a PIN try: success resets the counter; the last wrong try blocks the PIN."""
    if _same(code, card.secrets.pin):
        return replace(success, pin_tries=PIN_TRIES), CardAnswer(Status.OK, PIN_TRIES)
    tries = card.pin_tries - 1
    if tries == 0:
        return replace(card, pin_tries=0, state=CardState.BLOCKED), CardAnswer(Status.BLOCKED, 0)
    return replace(card, pin_tries=tries), CardAnswer(Status.WRONG, tries)


def _verify(card: SimCard, code: str | None, _new: str | None) -> tuple[SimCard, CardAnswer]:
    return _check_pin(card, code, replace(card, state=CardState.READY))


def _change(card: SimCard, code: str | None, new_pin: str | None) -> tuple[SimCard, CardAnswer]:
    if not card.pin_enabled or not new_pin:
        return card, CardAnswer(Status.NOT_ALLOWED, card.pin_tries)
    return _check_pin(card, code, replace(card, secrets=replace(card.secrets, pin=new_pin)))


def _enable(card: SimCard, code: str | None, _new: str | None) -> tuple[SimCard, CardAnswer]:
    if card.pin_enabled:
        return card, CardAnswer(Status.NOT_ALLOWED, card.pin_tries)
    return _check_pin(card, code, replace(card, pin_enabled=True))


def _disable(card: SimCard, code: str | None, _new: str | None) -> tuple[SimCard, CardAnswer]:
    if not card.pin_enabled:
        return card, CardAnswer(Status.NOT_ALLOWED, card.pin_tries)
    return _check_pin(card, code, replace(card, pin_enabled=False))


def _unblock(card: SimCard, code: str | None, new_pin: str | None) -> tuple[SimCard, CardAnswer]:
    if not new_pin:
        return card, CardAnswer(Status.NOT_ALLOWED, card.puk_tries)
    if _same(code, card.secrets.puk):
        unblocked = replace(
            card,
            state=CardState.READY,
            pin_tries=PIN_TRIES,
            puk_tries=PUK_TRIES,
            secrets=replace(card.secrets, pin=new_pin),
        )
        return unblocked, CardAnswer(Status.OK, PUK_TRIES)
    tries = card.puk_tries - 1
    if tries == 0:
        return replace(card, puk_tries=0, state=CardState.DEAD), CardAnswer(Status.BLOCKED, 0)
    return replace(card, puk_tries=tries), CardAnswer(Status.WRONG, tries)


TRANSITIONS: Final[dict[tuple[CardState | None, Command], Handler]] = {
    (None, Command.POWER_ON): _power_on,
    (CardState.PIN_REQUIRED, Command.POWER_OFF): _power_off,
    (CardState.READY, Command.POWER_OFF): _power_off,
    (CardState.BLOCKED, Command.POWER_OFF): _power_off,
    (CardState.DEAD, Command.POWER_OFF): _power_off,
    (CardState.PIN_REQUIRED, Command.VERIFY_PIN): _verify,
    (CardState.READY, Command.VERIFY_PIN): _verify,
    (CardState.READY, Command.CHANGE_PIN): _change,
    (CardState.READY, Command.ENABLE_PIN): _enable,
    (CardState.READY, Command.DISABLE_PIN): _disable,
    (CardState.PIN_REQUIRED, Command.UNBLOCK_PIN): _unblock,
    (CardState.READY, Command.UNBLOCK_PIN): _unblock,
    (CardState.BLOCKED, Command.UNBLOCK_PIN): _unblock,
}
"""Every legal (state, command) pair and its handler; ``None`` is a powered-off card."""
