"""Deprovisioning: the pure plan for each flag combination, and the service against the
in-memory fakes (no processes, no root)."""

from __future__ import annotations

import logging

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestagent.domain import accounts, authorized_keys, deprovision, dns, oslogin
from guestagent.domain.config import Config, InstanceSetup
from guestagent.domain.deprovision import (
    ClearRootPassword,
    EditFile,
    Entry,
    Observed,
    Options,
    RemoveFile,
    RemoveRecord,
    RestoreFile,
    StopService,
    StripKeys,
)
from guestagent.domain.local_users import KeysFileState, PasswdEntry
from guestagent.ports.commands import CommandResult
from guestagent.services import deprovision as service
from guestagent.services.context import Context
from tests.fakes import FixedClock, InMemoryFileSystem, InMemoryUsers, RecordingRunner
from tests.keys import ED25519, ED25519_BOB, RSA

GOOGLE = authorized_keys.MARKER
AGENT = authorized_keys.AGENT_MARKER
OWN = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBqhMMDjKiHa0eV1aJ8KRUEEYL82M8WpxghbfuSI94sC own\n"
HASH = "$6$salt$" + "x" * 86
SANDBOX = Options(owns_machine=False)
SANDBOX_USERS = Options(remove_users=True, owns_machine=False)


def user(name: str, uid: int) -> PasswdEntry:
    return PasswdEntry(name, uid, uid, "/root" if uid == 0 else f"/home/{name}", "/bin/bash")


def keys(text: str) -> KeysFileState:
    return KeysFileState(text=text, mode=0o600)


def guest(**overrides: object) -> Observed:
    """A GCE guest with alice and bob managed, carol (not managed) with a Google line of
    her own, and the usual instance files."""
    values: dict[str, object] = {
        "records": {accounts.STATE_PATH: frozenset({"alice", "bob"})},
        "users": {
            "root": user("root", 0),
            "alice": user("alice", 1001),
            "bob": user("bob", 1002),
            "carol": user("carol", 1003),
        },
        "groups": {"google-sudoers": frozenset({"alice", "bob"}), "adm": frozenset({"alice"})},
        "keys_files": {
            "alice": keys(f"{OWN}{GOOGLE}\n{ED25519}\n"),
            "bob": keys(f"{GOOGLE}\n{ED25519_BOB}\n"),
            "carol": keys(f"{GOOGLE}\n{RSA}\n"),
        },
        "texts": {
            "/etc/hostname": "vm1\n",
            "/etc/hosts": "127.0.0.1 localhost\n10.0.0.2 vm1.c.p.internal vm1  # Added by guestagent\n",
            "/etc/shadow": f"root:{HASH}:19000:0:99999:7:::\nalice:*:19000::::::\n",
        },
        "present": frozenset({"/etc/google_instance_id"}),
        "listings": {
            "/etc/ssh": (
                Entry("moduli"),
                Entry("sshd_config"),
                Entry("ssh_host_ed25519_key"),
                Entry("ssh_host_ed25519_key.pub"),
                Entry("ssh_host_rsa_key-cert.pub"),
                Entry("sshd_config.d", is_dir=True),
            ),
            "/var/lib/google": (Entry("google_users"),),
            "/var/lib/guestagent": (Entry("clock_drift_token"), Entry("firstboot")),
        },
    }
    values.update(overrides)
    return Observed(**values)  # type: ignore[arg-type]


def kinds(plan: deprovision.DeprovisionPlan, kind: type) -> list[object]:
    return [a for a in plan.actions if isinstance(a, kind)]


def removed(plan: deprovision.DeprovisionPlan) -> set[str]:
    return {a.path for a in plan.actions if isinstance(a, RemoveFile | RemoveRecord)}


# ---- flags


def test_without_user_managed_keys_and_sudo_go_users_and_own_lines_stay() -> None:
    plan = deprovision.plan(guest(), SANDBOX)
    strips = {a.user: a for a in kinds(plan, StripKeys)}
    assert set(strips) == {"alice", "bob"}  # carol is not managed: never looked at
    assert strips["alice"].text == OWN
    assert (strips["alice"].removed, strips["alice"].kept) == (1, 1)
    assert strips["bob"].text == ""
    assert not kinds(plan, accounts.DeleteUser)
    assert {(a.user, a.group) for a in kinds(plan, accounts.RemoveFromGroup)} == {
        ("alice", "google-sudoers"),
        ("bob", "google-sudoers"),
    }
    assert not kinds(plan, ClearRootPassword)


def test_with_user_managed_users_are_deleted_and_roots_password_removed() -> None:
    plan = deprovision.plan(guest(), SANDBOX_USERS)
    assert [a.user for a in kinds(plan, accounts.DeleteUser)] == ["alice", "bob"]
    assert not kinds(plan, StripKeys)
    assert not kinds(plan, accounts.RemoveFromGroup)  # userdel takes the memberships
    assert kinds(plan, ClearRootPassword) == [ClearRootPassword()]


@pytest.mark.parametrize(
    ("field", "wanted"),
    [
        (HASH, True),
        ("!" + HASH, True),  # locked, but the hash is still in the image
        ("", True),  # no password needed at all
        ("*", False),
        ("!", False),
        ("!!", False),
        ("!*", False),
        ("*LK*", False),
    ],
)
def test_root_password_is_removed_only_when_there_is_one(field: str, wanted: bool) -> None:
    assert deprovision.has_password(field) is wanted
    shadow = f"root:{field}:19000:0:99999:7:::\n"
    plan = deprovision.plan(guest(texts={"/etc/shadow": shadow}), SANDBOX_USERS)
    assert bool(kinds(plan, ClearRootPassword)) is wanted


def test_root_without_a_shadow_entry_is_left_alone_and_said() -> None:
    plan = deprovision.plan(guest(texts={"/etc/shadow": "alice:*:1::::::\n"}), SANDBOX_USERS)
    assert not kinds(plan, ClearRootPassword)
    assert any("root has no /etc/shadow entry" in n for n in plan.notes)


def test_root_and_system_accounts_in_a_record_are_never_deleted() -> None:
    """The CPIO device and SmartOS manage root's keys: deprovisioning strips them only."""
    have = guest(
        records={"/var/lib/guestagent/cpio_users": frozenset({"root", "daemonish", "dave"})},
        users={"root": user("root", 0), "daemonish": user("daemonish", 999), "dave": user("dave", 1004)},
        keys_files={
            "root": keys(f"{OWN}{AGENT}\n{ED25519}\n"),
            "daemonish": keys(f"{AGENT}\n{ED25519_BOB}\n"),
            "dave": keys(f"{AGENT}\n{RSA}\n"),
        },
        groups={"guestagent-sudoers": frozenset({"dave"})},
    )
    plan = deprovision.plan(have, SANDBOX_USERS)
    assert [a.user for a in kinds(plan, accounts.DeleteUser)] == ["dave"]
    strips = {a.user: a.text for a in kinds(plan, StripKeys)}
    assert strips == {"root": OWN, "daemonish": ""}
    assert sum("a system account is never deleted" in n for n in plan.notes) == 2
    assert "/var/lib/guestagent/cpio_users" in removed(plan)


@pytest.mark.parametrize("home", ["/", "", "/var", "/home/../etc", "/home/carol"])
def test_a_user_whose_home_is_not_its_own_is_not_deleted(home: str) -> None:
    users = {"alice": PasswdEntry("alice", 1001, 1001, home, "/bin/sh"), "carol": user("carol", 1003)}
    have = guest(records={accounts.STATE_PATH: frozenset({"alice"})}, users=users,
                 keys_files={"alice": keys(f"{OWN}{GOOGLE}\n{ED25519}\n")})
    plan = deprovision.plan(have, SANDBOX_USERS)
    assert not kinds(plan, accounts.DeleteUser)
    assert [a.text for a in kinds(plan, StripKeys)] == [OWN]
    assert any("is not its own" in n for n in plan.notes)


def test_every_platforms_record_counts_and_both_markers_are_managed() -> None:
    have = guest(
        records={
            accounts.STATE_PATH: frozenset({"alice"}),
            "/var/lib/guestagent/ec2_users": frozenset({"debian"}),
            "/var/lib/guestagent/nocloud_users": frozenset({"ghost"}),  # gone already
        },
        users={"alice": user("alice", 1001), "debian": user("debian", 1000)},
        keys_files={
            "alice": keys(f"{GOOGLE}\n{ED25519}\n{OWN}{AGENT}\n{RSA}\n"),
            "debian": keys(f"{AGENT}\n{ED25519_BOB}\n"),
        },
        groups={"google-sudoers": frozenset({"alice"}), "guestagent-sudoers": frozenset({"debian", "alice"})},
    )
    plan = deprovision.plan(have, SANDBOX)
    strips = {a.user: (a.text, a.removed) for a in kinds(plan, StripKeys)}
    assert strips == {"alice": (OWN, 2), "debian": ("", 1)}
    assert {(a.user, a.group) for a in kinds(plan, accounts.RemoveFromGroup)} == {
        ("alice", "google-sudoers"),
        ("alice", "guestagent-sudoers"),
        ("debian", "guestagent-sudoers"),
    }
    with_user = deprovision.plan(have, SANDBOX_USERS)
    assert [a.user for a in kinds(with_user, accounts.DeleteUser)] == ["alice", "debian"]
    # The records go last, after every user step.
    tail = with_user.actions[-3:]
    assert all(isinstance(a, RemoveRecord) for a in tail)
    assert {a.path for a in tail} == {
        accounts.STATE_PATH,
        "/var/lib/guestagent/ec2_users",
        "/var/lib/guestagent/nocloud_users",
    }


def test_a_symlinked_keys_file_is_not_touched() -> None:
    have = guest(keys_files={"alice": KeysFileState(text=None, file_is_symlink=True), "bob": keys("")})
    plan = deprovision.plan(have, SANDBOX)
    assert not kinds(plan, StripKeys)
    assert any("~alice/.ssh/authorized_keys: a symlink" in n for n in plan.notes)


def test_the_service_is_stopped_first_on_the_machine_itself_only() -> None:
    on_machine = deprovision.plan(guest(), Options())
    assert on_machine.actions[0] == StopService("guestagent.service")
    sandboxed = deprovision.plan(guest(), SANDBOX)
    assert not kinds(sandboxed, StopService)
    assert any("not stopped" in n for n in sandboxed.notes)


# ---- files


def test_host_keys_and_instance_records_and_state_go() -> None:
    plan = deprovision.plan(guest(), SANDBOX)
    assert removed(plan) == {
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssh/ssh_host_ed25519_key.pub",
        "/etc/ssh/ssh_host_rsa_key-cert.pub",
        "/etc/google_instance_id",
        "/var/lib/google/google_users",
        "/var/lib/guestagent/clock_drift_token",
        "/var/lib/guestagent/firstboot",
    }
    assert not any(isinstance(a, RemoveFile) and "moduli" in a.path for a in plan.actions)
    assert not any(n for n in plan.notes if "host keys" in n)


def test_host_keys_are_kept_when_the_next_boot_would_make_none() -> None:
    plan = deprovision.plan(guest(), Options(owns_machine=False, host_keys_regenerated=False))
    assert not any(p.startswith("/etc/ssh/") for p in removed(plan))
    assert any("keep the SSH host keys" in n and "RegenerateSshHostKeyPair" in n for n in plan.notes)


def test_hostname_reset_and_only_the_agents_hosts_line_removed() -> None:
    hosts = "127.0.0.1\tlocalhost\r\n# mine\r\n10.0.0.2 vm1.c.p.internal vm1  # Added by guestagent\r\n::1 x"
    plan = deprovision.plan(guest(texts={"/etc/hostname": "vm1\n", "/etc/hosts": hosts}), SANDBOX)
    edits = {a.path: a.text for a in kinds(plan, EditFile)}
    assert edits["/etc/hostname"] == "localhost\n"
    assert edits["/etc/hosts"] == "127.0.0.1\tlocalhost\r\n# mine\r\n::1 x"


def test_hostname_already_localhost_or_a_symlink_is_left() -> None:
    plan = deprovision.plan(guest(texts={"/etc/hostname": "localhost\n"}), SANDBOX)
    assert not kinds(plan, EditFile)
    linked = deprovision.plan(guest(texts={}, symlinks=frozenset({"/etc/hostname"})), SANDBOX)
    assert not kinds(linked, EditFile)
    assert any("/etc/hostname: a symlink" in n for n in linked.notes)


def test_resolv_conf_goes_only_when_the_agent_wrote_it() -> None:
    ours = f"{dns.HEADER}\nnameserver 10.0.0.1\n"
    plan = deprovision.plan(guest(texts={"/etc/resolv.conf": ours}), SANDBOX)
    assert "/etc/resolv.conf" in removed(plan)
    theirs = deprovision.plan(guest(texts={"/etc/resolv.conf": "nameserver 1.1.1.1\n"}), SANDBOX)
    assert "/etc/resolv.conf" not in removed(theirs)
    dropin = deprovision.plan(guest(present=frozenset({dns.RESOLVED_DROPIN})), SANDBOX)
    assert dns.RESOLVED_DROPIN in removed(dropin)


def test_boto_config_goes_only_as_the_agent_writes_it() -> None:
    from guestagent.domain.instance_setup import boto_config

    plan = deprovision.plan(guest(texts={"/etc/boto.cfg": boto_config("1234")}), SANDBOX)
    assert "/etc/boto.cfg" in removed(plan)
    custom = boto_config("1234") + "[Credentials]\ngs_oauth2_refresh_token = x\n"
    assert "/etc/boto.cfg" not in removed(deprovision.plan(guest(texts={"/etc/boto.cfg": custom}), SANDBOX))


def test_dhcp_leases_of_every_client() -> None:
    listings = {
        "/var/lib/dhcp": (Entry("dhclient.eth0.leases"), Entry("dhclient6.leases"), Entry("README")),
        "/var/lib/dhclient": (Entry("dhclient--eth0.lease"), Entry("sub", is_dir=True)),
        "/var/lib/NetworkManager": (Entry("internal-abc-eth0.lease"), Entry("NetworkManager.state")),
        "/var/lib/dhcpcd": (Entry("eth0.lease"), Entry("eth0.lease6"), Entry("duid")),
    }
    plan = deprovision.plan(guest(listings=listings), SANDBOX)
    assert removed(plan) >= {
        "/var/lib/dhcp/dhclient.eth0.leases",
        "/var/lib/dhcp/dhclient6.leases",
        "/var/lib/dhclient/dhclient--eth0.lease",
        "/var/lib/NetworkManager/internal-abc-eth0.lease",
        "/var/lib/dhcpcd/eth0.lease",
        "/var/lib/dhcpcd/eth0.lease6",
    }
    for kept in ("README", "sub", "NetworkManager.state", "duid"):
        assert not any(p.endswith("/" + kept) for p in removed(plan))


def test_sshd_config_restored_from_the_saved_original_and_the_copy_not_removed_twice() -> None:
    original = "Port 22\r\n# no final newline\tthere"
    listings = {"/var/lib/guestagent": (Entry("sshd_config.orig"), Entry("instance-id"))}
    plan = deprovision.plan(guest(listings=listings, texts={deprovision.SSHD_CONFIG_ORIG: original}), SANDBOX)
    assert kinds(plan, RestoreFile) == [
        RestoreFile("/etc/ssh/sshd_config", "/var/lib/guestagent/sshd_config.orig", original)
    ]
    assert deprovision.SSHD_CONFIG_ORIG not in removed(plan)
    assert "/var/lib/guestagent/instance-id" in removed(plan)


def test_oslogin_blocks_are_removed_exactly() -> None:
    nss = "passwd: files\ngroup: files\n"
    with_blocks = oslogin.nsswitch(nss, True)
    assert with_blocks != nss
    plan = deprovision.plan(guest(texts={oslogin.NSSWITCH: with_blocks}), SANDBOX)
    assert {a.path: a.text for a in kinds(plan, EditFile)}[oslogin.NSSWITCH] == nss


def test_state_subfolders_are_kept_and_said() -> None:
    listings = {"/var/lib/google": (Entry("google_users"), Entry("cache", is_dir=True))}
    plan = deprovision.plan(guest(listings=listings), SANDBOX)
    assert any("keep folder /var/lib/google/cache" in n for n in plan.notes)


def test_cloud_init_is_not_ours_and_the_plan_says_so() -> None:
    plan = deprovision.plan(guest(), SANDBOX)
    assert not any("/var/lib/cloud" in p for p in removed(plan))
    assert any("/var/lib/cloud" in n and "cloud-init" in n for n in plan.notes)


def test_a_clean_guest_has_nothing_to_remove() -> None:
    clean = Observed(texts={"/etc/hostname": "localhost\n"})
    plan = deprovision.plan(clean, Options())
    assert plan.actions == (StopService("guestagent.service"),)
    assert not deprovision.changes_anything(plan)
    assert "nothing to remove" in deprovision.plan(clean, SANDBOX).render()


def test_the_printed_plan_names_every_action_and_holds_no_key_material() -> None:
    plan = deprovision.plan(guest(), SANDBOX)
    text = plan.render("would")
    assert text.count("would ") == len(plan.actions)
    assert "~alice/.ssh/authorized_keys" in text and "/etc/ssh/ssh_host_ed25519_key" in text
    for line in (ED25519, ED25519_BOB, RSA, OWN):
        assert line.split()[1] not in text
        assert line.split()[1] not in repr(plan)


# ---- pure helpers


def test_record_paths_are_googles_and_every_platforms() -> None:
    names = ["ec2_users", "instance-id", "nocloud_users", "Bad_users", "x_users.tmp"]
    assert deprovision.record_paths(names) == (
        "/var/lib/google/google_users",
        "/var/lib/guestagent/ec2_users",
        "/var/lib/guestagent/nocloud_users",
    )


# Everything str.splitlines() splits at is a line end, not text inside a line.
_LINE_ENDS = "\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_line = st.text(st.characters(blacklist_characters=_LINE_ENDS, blacklist_categories=("Cs",)), max_size=40)


@given(
    own=st.lists(_line.filter(lambda s: s not in (GOOGLE, AGENT)), max_size=6),
    google=st.lists(st.sampled_from([ED25519, RSA]), max_size=3),
    agent=st.lists(st.sampled_from([ED25519_BOB, RSA]), max_size=3),
)
def test_stripping_keeps_every_own_line_byte_for_byte(own: list[str], google: list[str], agent: list[str]) -> None:
    own_lines = [f"{line}\n" for line in own]
    text = authorized_keys.render(own_lines, google, GOOGLE)
    text = authorized_keys.render(authorized_keys.split_managed(text, AGENT)[0], agent, AGENT)
    stripped, count, kept = deprovision.strip_managed(text)
    assert stripped == "".join(own_lines)
    assert (count, kept) == (len(google) + len(agent), len(own))


# ---- the service, in memory


class Machine:
    def __init__(self, respond: object = None, owns_machine: bool = False) -> None:
        self.fs = InMemoryFileSystem()
        self.users = InMemoryUsers(self.fs)
        hook = respond if respond is not None else self.users.respond
        self.runner = RecordingRunner(respond=hook)  # type: ignore[arg-type]
        self.fs.add_file("/etc/hostname", "vm1\n")
        self.fs.add_file("/etc/shadow", f"root:{HASH}:1:0:99999:7:::\n", mode=0o640)
        for name in ("alice", "bob", "carol"):
            self.users.add_user(name)
        self.users.add_group("google-sudoers", ["alice", "bob"])
        self.fs.write_user_file("/home/alice", ".ssh/authorized_keys", f"{OWN}{GOOGLE}\n{ED25519}\n",
                                mode=0o600, dir_mode=0o700, uid=1000, gid=1000)
        self.fs.write_user_file("/home/carol", ".ssh/authorized_keys", f"{GOOGLE}\n{RSA}\n",
                                mode=0o600, dir_mode=0o700, uid=1002, gid=1002)
        self.fs.add_file(accounts.STATE_PATH, "alice\nbob\n", mode=0o600)
        self.fs.add_file("/etc/google_instance_id", "111")
        self.fs.add_file("/etc/ssh/ssh_host_ed25519_key", "PRIVATE", mode=0o600)
        self.fs.add_file("/etc/ssh/sshd_config", "Port 2222\n# edited\n", mode=0o600)
        self.fs.add_file(deprovision.SSHD_CONFIG_ORIG, "Port 22\nno final newline", mode=0o600)
        self.fs.add_file("/var/lib/guestagent/firstboot", "stamps\n")
        self.ctx = Context(
            config=Config(),
            fs=self.fs,
            runner=self.runner,
            users=self.users,
            clock=FixedClock(),
            root="/" if owns_machine else "/sandbox",
            owns_machine=owns_machine,
            log=logging.getLogger("test"),
        )


def _respond_with_usermod_p(users: InMemoryUsers) -> object:
    """The users' hook, plus `usermod -p FIELD root` written into the fake /etc/shadow."""

    def respond(argv: tuple[str, ...]) -> CommandResult | None:
        if argv[0] == "usermod" and "-p" in argv:
            field = argv[argv.index("-p") + 1]
            assert users.fs is not None and argv[-1] == "root"
            users.fs.add_file("/etc/shadow", f"root:{field}:1:0:99999:7:::\n", mode=0o640)
            return CommandResult(argv, 0, "", "")
        return users.respond(argv)

    return respond


def test_service_with_user_deletes_managed_users_and_keeps_carol() -> None:
    machine = Machine()
    machine.runner.respond = _respond_with_usermod_p(machine.users)  # type: ignore[assignment]
    planned = service.plan(machine.ctx, remove_users=True)
    _, failures = service.apply(machine.ctx, planned)
    assert failures == []
    assert set(machine.users.passwd) == {"root", "carol"}
    assert ("usermod", "--prefix", "/sandbox", "-p", "*", "root") in machine.runner.calls
    assert ("userdel", "--prefix", "/sandbox", "-f", "-r", "alice") in machine.runner.calls
    assert machine.fs.read_text("/home/carol/.ssh/authorized_keys") == f"{GOOGLE}\n{RSA}\n"
    for gone in (accounts.STATE_PATH, "/etc/google_instance_id", "/etc/ssh/ssh_host_ed25519_key",
                 "/var/lib/guestagent/firstboot", deprovision.SSHD_CONFIG_ORIG):
        assert not machine.fs.exists(gone), gone
    # Restored byte for byte, the file's mode kept.
    assert machine.fs.read_text("/etc/ssh/sshd_config") == "Port 22\nno final newline"
    assert machine.fs.entry("/etc/ssh/sshd_config").mode == 0o600  # type: ignore[union-attr]
    assert machine.fs.read_text("/etc/hostname") == "localhost\n"
    # A second run has nothing left to do.
    assert not deprovision.changes_anything(service.plan(machine.ctx, remove_users=True))


def test_service_without_user_strips_keys_and_sudo_and_keeps_users() -> None:
    machine = Machine()
    _, failures = service.apply(machine.ctx, service.plan(machine.ctx, remove_users=False))
    assert failures == []
    assert {"alice", "bob", "carol"} <= set(machine.users.passwd)
    assert machine.fs.read_text("/home/alice/.ssh/authorized_keys") == OWN
    assert machine.users.members["google-sudoers"] == set()
    assert not any("-p" in call for call in machine.runner.calls)
    assert not machine.fs.exists(accounts.STATE_PATH)


def test_a_failed_userdel_keeps_the_record_for_the_next_run() -> None:
    machine = Machine()

    def respond(argv: tuple[str, ...]) -> CommandResult | None:
        if argv[0] == "userdel" and argv[-1] == "bob":
            return CommandResult(argv, 8, "", "userdel: user bob is currently used by process 1\n")
        return _respond_with_usermod_p(machine.users)(argv)  # type: ignore[operator]

    machine.runner.respond = respond
    _, failures = service.apply(machine.ctx, service.plan(machine.ctx, remove_users=True))
    assert any("bob" in f and "exit 8" in f for f in failures)
    assert any(f"kept {accounts.STATE_PATH}" in f for f in failures)
    assert machine.fs.read_text(accounts.STATE_PATH) == "alice\nbob\n"
    assert "alice" not in machine.users.passwd
    again = service.plan(machine.ctx, remove_users=True)
    assert [a.user for a in kinds(again, accounts.DeleteUser)] == ["bob"]


def test_a_service_that_will_not_stop_stops_everything() -> None:
    machine = Machine(owns_machine=True)

    def respond(argv: tuple[str, ...]) -> CommandResult | None:
        if argv[0] == "systemctl":
            return CommandResult(argv, 1, "", "Failed to stop guestagent.service: Access denied\n")
        raise AssertionError(f"ran {argv} after the service would not stop")

    machine.runner.respond = respond
    done, failures = service.apply(machine.ctx, service.plan(machine.ctx, remove_users=True))
    assert done == []
    assert len(failures) == 2 and "Access denied" in failures[0]
    assert machine.fs.exists("/etc/ssh/ssh_host_ed25519_key")


@pytest.mark.parametrize("code", [0, 5])
def test_a_stopped_or_absent_unit_is_fine(code: int) -> None:
    machine = Machine(owns_machine=True)
    seen: list[tuple[str, ...]] = []

    def respond(argv: tuple[str, ...]) -> CommandResult | None:
        seen.append(argv)
        if argv[0] == "systemctl":
            return CommandResult(argv, code, "", "")
        return machine.users.respond(argv)

    machine.runner.respond = respond
    _, failures = service.apply(machine.ctx, service.plan(machine.ctx, remove_users=False))
    assert failures == []
    assert seen[0] == ("systemctl", "stop", "guestagent.service")
    assert ("gpasswd", "-d", "alice", "google-sudoers") in seen


def test_a_configured_userdel_command_is_used_as_it_is() -> None:
    machine = Machine()
    config = Config(Accounts=attrs.evolve(Config().Accounts, userdel_cmd="userdel {user}"))
    ctx = attrs.evolve(machine.ctx, config=config)
    machine.runner.respond = _respond_with_usermod_p(machine.users)  # type: ignore[assignment]
    _, failures = service.apply(ctx, service.plan(ctx, remove_users=True))
    assert failures == []
    assert ("userdel", "--prefix", "/sandbox", "alice") in machine.runner.calls


def test_options_follow_the_config() -> None:
    machine = Machine()
    ctx = machine.ctx
    for setup, regenerated in ((InstanceSetup(), True), (InstanceSetup(set_host_keys=False), False),
                               (InstanceSetup(network_enabled=False), False)):
        options = service.options_for(attrs.evolve(ctx, config=Config(InstanceSetup=setup)), True)
        assert options.host_keys_regenerated is regenerated
        assert options.owns_machine is False and options.remove_users is True
