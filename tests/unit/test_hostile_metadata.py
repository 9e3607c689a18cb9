"""Hostile or broken metadata: one bad entry is refused with a reason, the rest still applies,
and a field that cannot be read never reads as "empty" (issue: lockouts and dead ends)."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestagent.domain.config import Config
from guestagent.domain.jsondoc import MAX_DEPTH, JsonRefused, loads, nesting_depth
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.gce import gce, parse_gce
from guestagent.services.context import Context
from guestagent.services.reconcile import Scheduler
from guestagent.services.subsystem import Outcome
from tests.fakes import FixedClock
from tests.keys import ED25519, ED25519_BOB, RSA

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DEEP = "[" * 5000 + "]" * 5000


def doc(instance_attrs: dict[str, Any] | None = None, **instance: Any) -> dict[str, Any]:
    return {
        "instance": {"id": 1, "hostname": "vm.c.p.internal", "attributes": instance_attrs or {}, **instance},
        "project": {"attributes": {}},
    }


# ---- deep nesting


def test_deeply_nested_google_ssh_comment_rejects_that_key_only() -> None:
    keys = f"alice:{ED25519}\nbob:{RSA.rsplit(' ', 1)[0]} google-ssh {DEEP}\ncarol:{ED25519_BOB}"
    md = parse_gce(doc({"ssh-keys": keys}))
    assert sorted(md.users()) == ["alice", "carol"]
    [bad] = md.rejections_for("accounts")
    assert bad.where == "instance/attributes/ssh-keys line 2"
    assert "nested deeper" in bad.reason and not bad.holds


def test_json_loader_refuses_deep_nesting_without_recursion_error() -> None:
    for text in (DEEP, "{" + '"a":{' * 3000 + "}" * 3001, '{"a": ' + DEEP + "}"):
        with pytest.raises(JsonRefused, match="nested deeper"):
            loads(text)
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = '{"k": "' + "[" * 10_000 + '\\"{", "l": [1]}'
    assert nesting_depth(text) == 2
    assert loads(text) == {"k": "[" * 10_000 + '"{', "l": [1]}


@given(st.text(alphabet='[]{}"\\:,0a ', max_size=300))
def test_json_loader_raises_only_its_own_error(text: str) -> None:
    with contextlib.suppress(JsonRefused):
        loads(text)


# ---- wrong types: the subsystem keeps its state


@pytest.mark.parametrize("value", [{"alice": ED25519}, [f"alice:{ED25519}"], 7, True, None])
@pytest.mark.parametrize("name", ["ssh-keys", "sshKeys", "block-project-ssh-keys"])
def test_a_wrong_typed_key_attribute_holds_accounts(name: str, value: object) -> None:
    md = parse_gce(doc({name: value}))
    [held] = md.held("accounts")
    assert held.where == f"instance/attributes/{name}"
    assert "not a string" in held.reason


def test_a_wrong_typed_enable_oslogin_holds_accounts_and_oslogin() -> None:
    md = parse_gce(doc({"enable-oslogin": {"x": 1}}))
    assert {r.concerns for r in md.rejections if r.holds} == {"accounts", "oslogin"}


@pytest.mark.parametrize(
    ("instance", "held"),
    [
        ({"networkInterfaces": {"mac": "42:01:0a:80:00:02"}}, {"nics", "routes", "hostname"}),
        ({"networkInterfaces": ["not an object"]}, {"nics", "routes", "hostname"}),
        ({"networkInterfaces": [{"ip": "10.0.0.2"}]}, {"nics", "routes", "hostname"}),
        ({"networkInterfaces": [{"mac": "42:01:0a:80:00:02", "forwardedIps": "10.0.0.9"}]}, {"routes"}),
        ({"networkInterfaces": [{"mac": "42:01:0a:80:00:02", "ipAliases": [{"r": 1}]}]}, {"routes"}),
        ({"hostname": ["vm"]}, {"hostname"}),
        ({"virtualClock": {"driftToken": {"a": 1}}}, {"clock"}),
        ({"virtualClock": {"driftToken": True}}, {"clock"}),
    ],
)
def test_every_field_a_subsystem_acts_on_holds_it_when_wrong_typed(
    instance: dict[str, Any], held: set[str]
) -> None:
    md = parse_gce(doc({"ssh-keys": f"alice:{ED25519}"}, **instance))
    assert {r.concerns for r in md.rejections if r.holds} == held
    assert md.users() == {"alice"}  # accounts is not concerned and still applies


def test_a_json_object_drift_token_is_not_recorded_as_a_token() -> None:
    md = parse_gce(doc(virtualClock={"driftToken": {"a": 1}}))
    assert gce(md).clock_drift_token is None
    assert md.held("clock")


def test_a_wrong_typed_script_is_refused_with_a_reason_and_others_still_run() -> None:
    md = parse_gce(doc({"startup-script": {"x": 1}, "startup-script-url": "https://example.com/s.sh"}))
    assert [s.key for s in md.scripts["startup"]] == ["startup-script-url"]
    [held] = md.rejections_for("scripts")
    assert held.where == "instance/attributes/startup-script"


# ---- the scheduler keeps a held subsystem's state and runs the others


@attrs.define
class Counting:
    name: str
    runs: int = 0

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return True

    def inputs(self, metadata: InstanceMetadata) -> object:
        return metadata.rejections_for(self.name)

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        self.runs += 1
        return Outcome(self.name)


def test_a_held_subsystem_does_not_run_others_do_and_it_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    accounts, hostname = Counting("accounts"), Counting("hostname")
    scheduler = Scheduler([accounts, hostname])
    ctx = Context(config=Config(), fs=None, runner=None, users=None, clock=FixedClock(NOW))  # type: ignore[arg-type]
    bad = parse_gce(doc({"ssh-keys": {"alice": ED25519}}))
    with caplog.at_level(logging.WARNING, logger="guestagent"):
        outcomes = scheduler.run_due(ctx, bad)
        scheduler.run_due(ctx, bad)
    assert accounts.runs == 0 and hostname.runs == 1  # the second pass: nothing changed for hostname
    assert outcomes[0].held and outcomes[0].ok
    assert [r.message for r in caplog.records].count(
        "accounts: kept as is: instance/attributes/ssh-keys: is a JSON object, not a string; kept the current state"
    ) == 1
    # Good metadata again: accounts runs at once, with no retry timer in the way.
    scheduler.run_due(ctx, parse_gce(doc({"ssh-keys": f"alice:{ED25519}"})))
    assert accounts.runs == 1


def test_rejections_are_logged_by_the_subsystem_they_concern_only(caplog: pytest.LogCaptureFixture) -> None:
    accounts, routes = Counting("accounts"), Counting("routes")
    ctx = Context(config=Config(), fs=None, runner=None, users=None, clock=FixedClock(NOW))  # type: ignore[arg-type]
    md = parse_gce(
        doc(networkInterfaces=[{"mac": "42:01:0a:80:00:02", "forwardedIps": ["10.0.0.9", "bogus"]}])
    )
    with caplog.at_level(logging.WARNING, logger="guestagent"):
        Scheduler([accounts, routes]).run_due(ctx, md)
    said = [r.message for r in caplog.records]
    assert said == ["routes: ignored instance/network-interfaces/0/forwarded-ips: not an IP address or network"]
    assert accounts.inputs(md) == ()  # a bad NIC address never re-runs accounts
