"""The routes and NIC subsystems against an in-memory kernel (FakeNetlink) and a recording runner."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain.config import Config, Daemons, NetworkInterfaces
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface
from guestagent.domain.nics import Link
from guestagent.domain.platforms.gce import GceNic
from guestagent.domain.routes import LocalRoute
from guestagent.ports.netlink import Netlink, NetlinkFailure
from guestagent.services.context import Context
from guestagent.services.nics import NicsSubsystem
from guestagent.services.routes import RoutesSubsystem
from tests.fake_netlink import FakeNetlink
from tests.fakes import RecordingRunner
from tests.gce_metadata import gce_md

MAC0, MAC1 = "42:01:0a:80:00:02", "42:01:0a:81:00:03"


def dhcp_runner(fail: int = 0) -> RecordingRunner:
    """Records the DHCP client runs; with `fail`, each exits with that status and "no lease"."""
    return RecordingRunner(returncode=fail, stderr="no lease" if fail else "", which={})


def kernel() -> FakeNetlink:
    return FakeNetlink(
        [Link(1, "lo", "00:00:00:00:00:00", True), Link(2, "eth0", MAC0, True), Link(3, "eth1", MAC1, False)],
        [LocalRoute("10.128.0.2/32", "eth0", 2), LocalRoute("10.9.9.9/32", "eth0", 4)],
    )


def context(tmp_path: Path, netlink: Callable[[], Netlink] | None, config: Config | None = None,
            runner: RecordingRunner | None = None, dry_run: bool = False) -> Context:
    fs = LocalFileSystem(str(tmp_path))
    return Context(
        config=config or Config(), fs=fs, runner=runner or dhcp_runner(), users=PasswdFiles(fs),
        clock=SystemClock(), netlink=netlink, root=str(tmp_path), dry_run=dry_run,
    )


def metadata(fwd: tuple[str, ...] = ("10.128.0.100",), aliases: tuple[str, ...] = ("10.8.0.0/24",),
             fwd6: tuple[str, ...] = ("2600:1900::5",)) -> InstanceMetadata:
    return gce_md("1", network_interfaces=(
        NetworkInterface(mac=MAC0, ip="10.128.0.2"), NetworkInterface(mac=MAC1, ip="10.129.0.3"),
    ), nics=(GceNic(MAC0, forwarded_ips=fwd, ip_aliases=aliases, forwarded_ipv6s=fwd6), GceNic(MAC1)))


def test_routes_are_added_then_a_second_pass_does_nothing(tmp_path: Path) -> None:
    nl = kernel()
    ctx = context(tmp_path, lambda: nl)
    sub = RoutesSubsystem()
    first = sub.reconcile(ctx, metadata())
    assert first.ok
    assert set(nl.routes) >= {
        LocalRoute("10.128.0.100/32", "eth0", 66),
        LocalRoute("10.8.0.0/24", "eth0", 66),
        LocalRoute("2600:1900::5/128", "eth0", 66),
    }
    assert sub.reconcile(ctx, metadata()).actions == ()
    assert nl.closed == 2  # one socket per pass, always closed


def test_removed_forwarded_ip_goes_and_foreign_routes_stay(tmp_path: Path) -> None:
    nl = kernel()
    ctx = context(tmp_path, lambda: nl)
    sub = RoutesSubsystem()
    sub.reconcile(ctx, metadata())
    out = sub.reconcile(ctx, metadata(fwd=(), aliases=(), fwd6=()))
    assert out.ok
    assert nl.routes == [LocalRoute("10.128.0.2/32", "eth0", 2), LocalRoute("10.9.9.9/32", "eth0", 4)]


def test_custom_protocol_id_is_used_and_respected(tmp_path: Path) -> None:
    from guestagent.domain.config import IpForwarding

    nl = kernel()
    nl.routes.append(LocalRoute("10.7.7.7/32", "eth0", 66))  # someone else's proto 66 now
    ctx = context(tmp_path, lambda: nl, Config(IpForwarding=IpForwarding(ethernet_proto_id=77)))
    RoutesSubsystem().reconcile(ctx, metadata(aliases=(), fwd6=()))
    assert LocalRoute("10.128.0.100/32", "eth0", 77) in nl.routes
    assert LocalRoute("10.7.7.7/32", "eth0", 66) in nl.routes


def test_dry_run_changes_nothing_and_says_what_it_would_do(tmp_path: Path) -> None:
    nl = kernel()
    out = RoutesSubsystem().reconcile(context(tmp_path, lambda: nl, dry_run=True), metadata())
    assert nl.calls == []
    assert "add route local 10.128.0.100/32 dev eth0 table local proto 66" in out.actions


def test_one_refused_route_does_not_stop_the_others(tmp_path: Path) -> None:
    nl = kernel()
    nl.fail_on.add("10.8.0.0/24")
    out = RoutesSubsystem().reconcile(context(tmp_path, lambda: nl), metadata())
    assert len(out.failures) == 1
    assert "10.8.0.0/24" in out.failures[0]
    assert LocalRoute("2600:1900::5/128", "eth0", 66) in nl.routes


def test_unreachable_namespace_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    def broken() -> Netlink:
        raise NetlinkFailure("cannot open network namespace 'gone'")

    out = RoutesSubsystem().reconcile(context(tmp_path, broken), metadata())
    assert out.failures == ("cannot open network namespace 'gone'",)


@pytest.mark.parametrize(
    "config",
    [Config(Daemons=Daemons(network_daemon=False)), Config(Daemons=Daemons(ip_forwarding_daemon=False)),
     Config(NetworkInterfaces=NetworkInterfaces(ip_forwarding=False))],
)
def test_routes_switched_off(tmp_path: Path, config: Config) -> None:
    assert RoutesSubsystem().enabled(context(tmp_path, kernel, config), metadata()) is False


def test_no_netlink_means_disabled(tmp_path: Path) -> None:
    assert RoutesSubsystem().enabled(context(tmp_path, None), metadata()) is False
    assert NicsSubsystem().enabled(context(tmp_path, None), metadata()) is False


def test_refused_alias_is_logged_once_across_passes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nl = kernel()
    ctx = context(tmp_path, lambda: nl)
    sub = RoutesSubsystem()
    with caplog.at_level(logging.WARNING, logger="guestagent"):
        sub.reconcile(ctx, metadata(aliases=("0.0.0.0/0",)))
        sub.reconcile(ctx, metadata(aliases=("0.0.0.0/0",)))
    assert sum("0.0.0.0/0" in r.getMessage() for r in caplog.records) == 1
    assert not any(r.destination == "0.0.0.0/0" for r in nl.routes)


def test_routes_inputs_ignore_unrelated_metadata() -> None:
    sub = RoutesSubsystem()
    a = metadata()
    b = attrs.evolve(a, instance_id="2", hostname="other")
    assert sub.inputs(a) == sub.inputs(b)
    assert sub.inputs(a) != sub.inputs(metadata(fwd=("10.128.0.101",)))


# ---- NICs


def test_secondary_nic_comes_up_and_gets_dhcp_primary_untouched(tmp_path: Path) -> None:
    nl = kernel()
    nl.add_link(Link(2, "eth0", MAC0, False))  # even a down primary stays as it is
    runner = dhcp_runner()
    ctx = context(tmp_path, lambda: nl, Config(NetworkInterfaces=NetworkInterfaces(dhcp_command="dhclient -1")),
                  runner)
    out = NicsSubsystem().reconcile(ctx, metadata())
    assert out.ok
    assert nl.calls == ["up eth1"]
    assert runner.calls == [("dhclient", "-1", "eth1")]
    assert nl.link("eth0").up is False


def test_dhcp_runs_inside_the_namespace_the_agent_manages(tmp_path: Path) -> None:
    nl = FakeNetlink([Link(2, "eth0", MAC0, True), Link(3, "eth1", MAC1, True)], netns="gat-x")
    runner = dhcp_runner()
    ctx = context(tmp_path, lambda: nl, Config(NetworkInterfaces=NetworkInterfaces(dhcp_command="dhclient")),
                  runner)
    NicsSubsystem().reconcile(ctx, metadata())
    assert runner.calls == [("ip", "netns", "exec", "gat-x", "dhclient", "eth1")]


def test_link_that_will_not_come_up_gets_no_dhcp(tmp_path: Path) -> None:
    nl = kernel()
    nl.fail_on.add("eth1")
    runner = dhcp_runner()
    ctx = context(tmp_path, lambda: nl, Config(NetworkInterfaces=NetworkInterfaces(dhcp_command="dhclient")),
                  runner)
    out = NicsSubsystem().reconcile(ctx, metadata())
    assert runner.calls == []
    assert len(out.failures) == 1


def test_failed_dhcp_is_reported(tmp_path: Path) -> None:
    ctx = context(tmp_path, kernel, Config(NetworkInterfaces=NetworkInterfaces(dhcp_command="dhclient")),
                  dhcp_runner(fail=2))
    out = NicsSubsystem().reconcile(ctx, metadata())
    assert out.failures == ("run DHCP on eth1: dhclient eth1 failed: exit 2: no lease",)


def test_missing_nic_asks_for_a_recheck_and_present_nics_do_not(tmp_path: Path) -> None:
    nl = FakeNetlink([Link(2, "eth0", MAC0, True)])  # eth1 not plugged in yet
    ctx = context(tmp_path, lambda: nl)
    md = gce_md("1", network_interfaces=(NetworkInterface(mac=MAC0), NetworkInterface(mac=MAC1)), nics=(
        GceNic(MAC0, forwarded_ips=("10.128.0.100",)),
        GceNic(MAC1, forwarded_ips=("10.129.0.100",)),
    ))
    assert RoutesSubsystem().reconcile(ctx, md).wake_at is not None
    assert NicsSubsystem().reconcile(ctx, md).wake_at is not None
    nl.add_link(Link(3, "eth1", MAC1, True, ("10.129.0.3",)))
    out = RoutesSubsystem().reconcile(ctx, md)
    assert out.wake_at is None
    assert LocalRoute("10.129.0.100/32", "eth1", 66) in nl.routes
    assert NicsSubsystem().reconcile(ctx, md).wake_at is None
