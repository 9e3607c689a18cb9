"""When the clock is resynced: only on a real change of the drift token."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestagent.domain import clock
from guestagent.domain.clock import STATE_PATH, RecordToken, RunSync
from guestagent.domain.config import Config, Daemons

CMD = "/sbin/hwclock --hctosys -u --noadjfile"
ARGV = ("/sbin/hwclock", "--hctosys", "-u", "--noadjfile")


def test_first_sight_records_the_token_without_resyncing() -> None:
    assert clock.plan("0", None, CMD) == (RecordToken(STATE_PATH, "0"),)


def test_same_token_does_nothing() -> None:
    assert clock.plan("0", "0", CMD) == ()


def test_changed_token_resyncs_then_records() -> None:
    assert clock.plan("1234", "0", CMD) == (RunSync(ARGV, "1234"), RecordToken(STATE_PATH, "1234"))


def test_no_token_in_metadata_does_nothing() -> None:
    assert clock.plan(None, "0", CMD) == ()


def test_empty_sync_command_only_records() -> None:
    assert clock.plan("5", "4", "") == (RecordToken(STATE_PATH, "5"),)


@given(st.text())
def test_state_round_trips_any_token(token: str) -> None:
    assert clock.parse_state(clock.render_state(token)) == token


@pytest.mark.parametrize("text", [None, "", "0\n", "{", "[]", '{"drift_token": 5}', '{"other": "1"}'])
def test_unusable_state_means_no_record(text: str | None) -> None:
    assert clock.parse_state(text) is None


def test_clock_skew_daemon_switch() -> None:
    assert clock.clock_enabled(Config()) is True
    assert clock.clock_enabled(Config(Daemons=Daemons(clock_skew_daemon=False))) is False
