"""The SIM card state machine, without SimPy: counters, lockout, PUK, illegal commands."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.sim_card import PIN_TRIES, PUK_TRIES, CardState, Command, IllegalCommand, SimCard, SimSecrets, Status

SECRETS = SimSecrets(pin="1234", puk="87654321", passcode="pass-5555")


def powered(pin_enabled: bool = True) -> SimCard:
    card, answer = SimCard("8981300000000000001", SECRETS, pin_enabled=pin_enabled).apply(Command.POWER_ON)
    assert answer.ok
    return card


def test_power_on_asks_for_the_pin_only_when_enabled() -> None:
    assert powered(True).state is CardState.PIN_REQUIRED
    assert powered(False).state is CardState.READY


def test_three_wrong_pins_lock_the_sim_and_the_answer_counts_down() -> None:
    card = powered()
    answers = []
    for _ in range(3):
        card, answer = card.apply(Command.VERIFY_PIN, "0000")
        answers.append((answer.status, answer.tries_left))
    assert answers == [(Status.WRONG, 2), (Status.WRONG, 1), (Status.BLOCKED, 0)]
    assert card.state is CardState.BLOCKED
    with pytest.raises(IllegalCommand):
        card.apply(Command.VERIFY_PIN, "1234")


def test_a_correct_pin_resets_the_counter() -> None:
    card, _ = powered().apply(Command.VERIFY_PIN, "0000")
    card, answer = card.apply(Command.VERIFY_PIN, "1234")
    assert answer.ok and card.pin_tries == PIN_TRIES and card.state is CardState.READY


def test_puk_unblocks_and_sets_a_new_pin() -> None:
    card = powered()
    for _ in range(3):
        card, _ = card.apply(Command.VERIFY_PIN, "9999")
    card, answer = card.apply(Command.UNBLOCK_PIN, "87654321", "2468")
    assert answer.ok and card.state is CardState.READY and card.pin_tries == PIN_TRIES
    card, _ = card.apply(Command.POWER_OFF)
    card, _ = card.apply(Command.POWER_ON)
    assert card.state is CardState.PIN_REQUIRED, "power cycle asks for the PIN again"
    card, answer = card.apply(Command.VERIFY_PIN, "2468")
    assert answer.ok


def test_ten_wrong_puks_kill_the_card_for_good() -> None:
    card = powered()
    for _ in range(3):
        card, _ = card.apply(Command.VERIFY_PIN, "9999")
    for attempt in range(PUK_TRIES):
        card, answer = card.apply(Command.UNBLOCK_PIN, "00000000", "1111")
        assert answer.tries_left == PUK_TRIES - attempt - 1
    assert answer.status is Status.BLOCKED and card.state is CardState.DEAD
    card, _ = card.apply(Command.POWER_OFF)
    card, _ = card.apply(Command.POWER_ON)
    assert card.state is CardState.DEAD
    for command in (Command.VERIFY_PIN, Command.UNBLOCK_PIN, Command.DISABLE_PIN):
        with pytest.raises(IllegalCommand):
            card.apply(command, "87654321", "1111")


def test_enable_disable_change() -> None:
    card = powered(False)
    card, answer = card.apply(Command.ENABLE_PIN, "1234")
    assert answer.ok and card.pin_enabled
    card, answer = card.apply(Command.ENABLE_PIN, "1234")
    assert answer.status is Status.NOT_ALLOWED
    card, answer = card.apply(Command.CHANGE_PIN, "1234", "4321")
    assert answer.ok
    card, answer = card.apply(Command.DISABLE_PIN, "1234")
    assert answer.status is Status.WRONG and card.pin_enabled
    card, answer = card.apply(Command.DISABLE_PIN, "4321")
    assert answer.ok and not card.pin_enabled


def test_secrets_never_show() -> None:
    card = powered()
    text = repr(card) + str(card) + repr(card.secrets)
    for secret in ("1234", "87654321", "pass-5555"):
        assert secret not in text
    card, _ = card.apply(Command.VERIFY_PIN, "0000")
    try:
        card.apply(Command.ENABLE_PIN, "1234")
    except IllegalCommand as exc:
        assert "1234" not in str(exc)


commands = st.sampled_from(list(Command))
codes = st.sampled_from([None, "1234", "0000", "87654321", "11111111"])


@given(st.lists(st.tuples(commands, codes, codes), max_size=60))
def test_illegal_commands_leave_the_card_unchanged_and_counters_stay_in_range(
    script: list[tuple[Command, str | None, str | None]],
) -> None:
    card = SimCard("8981300000000000001", SECRETS, pin_enabled=True)
    for command, code, new_pin in script:
        before = card
        try:
            card, _ = card.apply(command, code, new_pin)
        except IllegalCommand:
            assert card == before
        assert 0 <= card.pin_tries <= PIN_TRIES and 0 <= card.puk_tries <= PUK_TRIES
        if card.state is CardState.BLOCKED:
            assert card.pin_tries == 0
        if card.state is CardState.DEAD:
            assert card.puk_tries == 0
