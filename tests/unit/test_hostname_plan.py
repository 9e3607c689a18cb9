"""Hostname: validation, the name chosen, and /etc/hosts edits that spare the user's lines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestagent.domain import hostname as hn
from guestagent.domain.config import InstanceSetup
from guestagent.domain.hostname import (
    HOSTS_MARKER,
    HostnameCurrent,
    HostnameDesired,
    SetLiveHostname,
    WriteHostnameFile,
    WriteHosts,
)
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface

FQDN = "vm-1.c.my-proj.internal"


def metadata(hostname: str = FQDN, ip: str | None = "10.128.0.2") -> InstanceMetadata:
    nics = (NetworkInterface(mac="42:01:0a:80:00:02", ip=ip),) if ip else ()
    return InstanceMetadata("gce", "1", hostname=hostname, network_interfaces=nics)


def want(fqdn: bool = False, **kw: str) -> HostnameDesired:
    result, notes = hn.desired(metadata(**kw), InstanceSetup(hostname_fqdn=fqdn))
    assert result is not None, notes
    return result


def test_short_name_by_default_fqdn_when_asked() -> None:
    assert want().name == "vm-1"
    assert want(fqdn=True).name == FQDN


def test_hosts_line_maps_primary_ip_to_fqdn_then_short_name() -> None:
    assert hn.hosts_line(want()) == f"10.128.0.2 {FQDN} vm-1  {HOSTS_MARKER}"


def test_hosts_line_without_an_ip_uses_debians_self_address() -> None:
    assert hn.hosts_line(want(ip="")).startswith("127.0.1.1 ")


def test_single_label_hostname_is_listed_once() -> None:
    assert hn.hosts_line(want(hostname="solo")) == f"10.128.0.2 solo  {HOSTS_MARKER}"


@pytest.mark.parametrize(
    "bad",
    ["-vm.example", "vm-.example", "vm_1.example", "vm..example", "a" * 64 + ".example",
     ".".join(["abcdefghi"] * 26), "vm 1", "vm;reboot", "vm\nx", "10.0.0.1", "ünïcode", "."],
)
def test_garbage_hostname_changes_nothing_and_says_why(bad: str) -> None:
    result, notes = hn.desired(metadata(hostname=bad), InstanceSetup())
    assert result is None
    assert len(notes) == 1
    assert "refused" in notes[0]


def test_empty_hostname_is_silently_no_change() -> None:
    assert hn.desired(metadata(hostname=""), InstanceSetup()) == (None, ())


def test_trailing_dot_is_dropped() -> None:
    assert hn.check_hostname("vm.example.com.") == "vm.example.com"


def test_fqdn_too_long_for_the_kernel_falls_back_to_the_short_name() -> None:
    long_fqdn = "vm." + ".".join(["a" * 30] * 3)
    result, notes = hn.desired(metadata(hostname=long_fqdn), InstanceSetup(hostname_fqdn=True))
    assert result is not None
    assert result.name == "vm"
    assert notes


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@given(st.lists(labels, min_size=1, max_size=5).filter(lambda ls: not ls[-1].isdigit()))
def test_every_rfc1123_name_is_accepted(parts: list[str]) -> None:
    name = ".".join(parts)
    assert hn.check_hostname(name) == name


USER_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "# The following lines are desirable for IPv6 capable hosts\n"
    "::1     localhost ip6-localhost ip6-loopback\n"
    "\n"
    "10.0.0.9  build-cache   # my own line\n"
)


def test_first_write_appends_our_line_and_keeps_user_lines_byte_for_byte() -> None:
    line = hn.hosts_line(want())
    out = hn.with_hosts_line(USER_HOSTS, line)
    assert out == USER_HOSTS + line + "\n"


def test_rewrite_replaces_our_line_in_place() -> None:
    old = f"10.128.0.2 old.c.p.internal old  {HOSTS_MARKER}\n"
    text = "127.0.0.1 localhost\n" + old + "10.0.0.9 cache\n"
    line = hn.hosts_line(want())
    assert hn.with_hosts_line(text, line) == "127.0.0.1 localhost\n" + line + "\n10.0.0.9 cache\n"


def test_duplicate_agent_lines_collapse_to_one() -> None:
    line = hn.hosts_line(want())
    text = f"{line}\n127.0.0.1 localhost\n{line}\n"
    assert hn.with_hosts_line(text, line) == f"{line}\n127.0.0.1 localhost\n"


def test_file_without_final_newline_and_crlf_endings_survive() -> None:
    line = hn.hosts_line(want())
    assert hn.with_hosts_line("127.0.0.1 localhost", line) == f"127.0.0.1 localhost\n{line}\n"
    crlf = "127.0.0.1 localhost\r\n::1 localhost\r\n"
    assert hn.with_hosts_line(crlf, line) == crlf + line + "\r\n"


def test_missing_hosts_file_gets_just_our_line() -> None:
    line = hn.hosts_line(want())
    assert hn.with_hosts_line(None, line) == line + "\n"


host_lines = st.lists(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"))
    .filter(lambda s: not s.rstrip().endswith(HOSTS_MARKER)),
    max_size=8,
)


@given(host_lines)
def test_round_trip_keeps_every_user_line_and_is_idempotent(lines: list[str]) -> None:
    text = "".join(f"{line}\n" for line in lines)
    line = hn.hosts_line(want())
    once = hn.with_hosts_line(text, line)
    assert once.splitlines() == [*lines, line]
    assert hn.with_hosts_line(once, line) == once
    other = hn.hosts_line(want(hostname="renamed.c.p.internal"))
    assert hn.with_hosts_line(once, other).splitlines() == [*lines, other]


def test_plan_from_scratch_writes_both_files_and_sets_live_name() -> None:
    planned = hn.plan(want(), HostnameCurrent(hostname_file=None, hosts_file=USER_HOSTS, live="debian"))
    line = hn.hosts_line(want())
    assert planned.actions == (
        WriteHostnameFile("/etc/hostname", "vm-1\n"),
        WriteHosts("/etc/hosts", USER_HOSTS + line + "\n", line),
        SetLiveHostname("vm-1"),
    )


def test_plan_is_empty_once_applied() -> None:
    hosts = hn.with_hosts_line(USER_HOSTS, hn.hosts_line(want()))
    assert hn.plan(want(), HostnameCurrent("vm-1\n", hosts, "vm-1")).actions == ()


def test_live_name_left_alone_when_not_managed() -> None:
    hosts = hn.with_hosts_line(USER_HOSTS, hn.hosts_line(want()))
    assert hn.plan(want(), HostnameCurrent("vm-1\n", hosts, None)).actions == ()
