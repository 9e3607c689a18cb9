"""Clock skew: resync the system clock when the platform's drift token changes.

After a live migration or a host-side clock step the platform changes the
token (GCE: `instance/virtual-clock/drift-token`); the guest then reloads the
system clock from the (correct) hardware clock with `[Clock] sync_command`.

When to run, decided once here:

* Never at first sight. With no record of a token (first start of the agent
  on this machine, or the record is unreadable) the agent only records the
  token: nothing says the clock drifted, and stepping the clock at boot would
  only disturb NTP.
* A token equal to the recorded one: nothing, also across agent restarts
  (the record lives in STATE_PATH, not only in memory).
* A token different from the record: run the command, then record the token.
  This includes a change that happened while the agent was stopped: the
  migration that changed it still happened. A failed command records
  nothing, so the next pass tries again.
* No token in metadata (platforms without one): nothing, record untouched.
"""

from __future__ import annotations

import json
import shlex

import attrs

from guestagent.domain.config import Config
from guestagent.domain.jsondoc import JsonRefused, loads

STATE_DIR = "/var/lib/guestagent"
STATE_PATH = f"{STATE_DIR}/clock_drift_token"


@attrs.frozen
class RunSync:
    argv: tuple[str, ...]
    token: str

    def describe(self) -> str:
        return f"resync clock (drift token now {self.token!r}): {shlex.join(self.argv)}"


@attrs.frozen
class RecordToken:
    path: str
    token: str

    def describe(self) -> str:
        return f"record clock drift token {self.token!r} in {self.path}"


Action = RunSync | RecordToken


def clock_enabled(config: Config) -> bool:
    return config.Daemons.clock_skew_daemon


def sync_argv(command: str) -> tuple[str, ...]:
    """`[Clock] sync_command` split into argv (never run through a shell)."""
    return tuple(shlex.split(command))


def parse_state(text: str | None) -> str | None:
    """The recorded token, or None when there is no usable record."""
    if not text:
        return None
    try:
        data = loads(text)
    except JsonRefused:  # garbage or deep nesting: no usable record, never a crash
        return None
    token = data.get("drift_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def render_state(token: str) -> str:
    # JSON, because a token is platform text and may hold any character.
    return json.dumps({"drift_token": token}) + "\n"


def plan(token: str | None, recorded: str | None, sync_command: str) -> tuple[Action, ...]:
    if token is None or token == recorded:
        return ()
    record = RecordToken(STATE_PATH, token)
    if recorded is None:
        return (record,)
    argv = sync_argv(sync_command)
    if not argv:
        return (record,)  # resync switched off by an empty command; keep the record current
    return (RunSync(argv, token), record)
