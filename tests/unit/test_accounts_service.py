"""The accounts service end to end in memory: observe, plan and apply against the fakes.

No root, no processes: shadow-utils' argv land in InMemoryUsers through the runner's
`respond` hook, files in an InMemoryFileSystem that counts every write.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import attrs
import pytest

from guestagent.domain.config import Accounts, Config
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.ssh_keys import key_for_user
from guestagent.ports.commands import CommandResult
from guestagent.services.accounts import AccountsSubsystem
from guestagent.services.context import Context
from guestagent.services.subsystem import Outcome
from tests.fakes import (
    FixedClock,
    InMemoryFileSystem,
    InMemoryUsers,
    RecordingGuestAttributes,
    RecordingRunner,
)
from tests.gce_metadata import from_attributes
from tests.keys import ECDSA, ED25519, ED25519_BOB, RSA

T0 = datetime(2026, 3, 1, tzinfo=UTC)
GOOGLE = "# Added by Google"
AGENT = "# Added by guestagent"
SKEL_BASHRC = "# ~/.bashrc from the skeleton\n"


@attrs.define
class Guest:
    """One in-memory machine and the context the accounts service gets."""

    fs: InMemoryFileSystem
    users: InMemoryUsers
    runner: RecordingRunner
    attributes: RecordingGuestAttributes
    ctx: Context

    def settle(self) -> None:
        """Forget what was run and written so far."""
        self.runner.calls.clear()
        self.users.commands.clear()
        self.fs.reset_counts()

    def keys(self, user: str) -> str | None:
        return self.fs.read_text(f"{self.users.passwd[user].home}/.ssh/authorized_keys")


def guest(config: Config | None = None, login_defs: str = "UID_MIN 1000\nHOME_MODE 0750\n") -> Guest:
    fs = InMemoryFileSystem()
    fs.add_file("/etc/login.defs", login_defs)
    fs.add_dir("/etc/skel")
    fs.add_file("/etc/skel/.bashrc", SKEL_BASHRC)
    fs.add_dir("/home")
    users = InMemoryUsers(fs)
    runner = RecordingRunner(respond=users.respond)
    attributes = RecordingGuestAttributes()
    ctx = Context(
        config=config or Config(),
        fs=fs,
        runner=runner,
        users=users,
        clock=FixedClock(T0),
        guest_attributes=attributes,
    )
    return Guest(fs, users, runner, attributes, ctx)


def gce_keys(**users: list[str]) -> InstanceMetadata:
    return from_attributes({"ssh-keys": "\n".join(f"{u}:{k}" for u, ks in users.items() for k in ks)})


def unnamed_keys(*lines: str, platform: str = "ec2") -> InstanceMetadata:
    """A non-GCE snapshot whose keys carry no user name (EC2's key pair)."""
    return InstanceMetadata(platform, "i-0123", ssh_keys=tuple(key_for_user(None, line) for line in lines))


def managed(*keys: str, marker: str = GOOGLE) -> str:
    return "".join(f"{marker}\n{k}\n" for k in keys)


def ok(outcome: Outcome) -> Outcome:
    assert outcome.failures == ()
    return outcome


def test_first_pass_creates_users_with_keys_and_sudo() -> None:
    g = guest()
    ok(AccountsSubsystem().reconcile(g.ctx, gce_keys(alice=[ED25519, RSA], bob=[ED25519_BOB])))

    assert [c[0] for c in g.users.commands] == ["groupadd", "useradd", "useradd"]
    assert g.users.groups()["google-sudoers"] == {"alice", "bob"}
    # only the configured groups that exist on the machine (no docker, lxd, dip here)
    assert g.users.groups()["video"] == {"alice", "bob"}
    assert "docker" not in g.users.groups()
    alice = g.users.passwd["alice"]
    assert alice.uid >= 1000 and alice.shell == "/bin/bash"

    # the home comes from the skeleton, with login.defs' HOME_MODE, owned by the user
    home = g.fs.stat("/home/alice")
    assert home is not None and (home.mode, home.uid, home.gid) == (0o750, alice.uid, alice.gid)
    assert g.fs.read_text("/home/alice/.bashrc") == SKEL_BASHRC
    assert g.fs.stat("/home/alice/.bashrc").uid == alice.uid  # type: ignore[union-attr]

    assert g.keys("alice") == managed(ED25519, RSA)
    assert g.keys("bob") == managed(ED25519_BOB)
    ssh_dir = g.fs.stat("/home/alice/.ssh")
    keys_file = g.fs.stat("/home/alice/.ssh/authorized_keys")
    assert ssh_dir is not None and (ssh_dir.mode, ssh_dir.uid) == (0o700, alice.uid)
    assert keys_file is not None and (keys_file.mode, keys_file.uid, keys_file.gid) == (
        0o600,
        alice.uid,
        alice.gid,
    )

    assert g.fs.read_text("/etc/sudoers.d/google_sudoers") == "%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL\n"
    assert g.fs.stat("/etc/sudoers.d/google_sudoers").mode == 0o440  # type: ignore[union-attr]
    # the drop-in was checked by visudo before it went into place
    (visudo,) = [c for c in g.runner.calls if c[0].endswith("visudo")]
    assert visudo[1] == "-cf" and visudo[2].startswith(g.fs.host_path("/etc/sudoers.d/"))
    assert g.fs.read_text("/var/lib/google/google_users") == "alice\nbob\n"
    assert "guest-agent/sshable" in g.attributes.values


def test_second_pass_with_the_same_metadata_runs_nothing_and_writes_nothing() -> None:
    g = guest()
    metadata = gce_keys(alice=[ED25519], bob=[ED25519_BOB])
    accounts = AccountsSubsystem()
    ok(accounts.reconcile(g.ctx, metadata))
    g.settle()

    assert ok(accounts.reconcile(g.ctx, metadata)).actions == ()
    # a fresh subsystem looks at everything again (a full pass) and still finds nothing to do
    assert ok(AccountsSubsystem().reconcile(g.ctx, metadata)).actions == ()
    assert g.runner.calls == []
    assert g.fs.operations == []


def test_one_changed_key_rewrites_exactly_one_file() -> None:
    g = guest()
    accounts = AccountsSubsystem()
    ok(accounts.reconcile(g.ctx, gce_keys(alice=[ED25519], bob=[ED25519_BOB], carol=[RSA])))
    g.settle()

    ok(accounts.reconcile(g.ctx, gce_keys(alice=[ED25519], bob=[ECDSA], carol=[RSA])))

    assert g.fs.writes == {"/home/bob/.ssh/authorized_keys": 1}
    assert g.fs.operations == [("write_user_file", "/home/bob/.ssh/authorized_keys")]
    assert g.runner.calls == []
    assert g.keys("bob") == managed(ECDSA)


def test_a_users_own_lines_are_kept_byte_for_byte() -> None:
    g = guest()
    carol = g.users.add_user("carol")
    own = "# my laptop\r\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMine carol@laptop\n\n"
    g.fs.add_dir("/home/carol/.ssh", 0o700, carol.uid, carol.gid)
    g.fs.add_file("/home/carol/.ssh/authorized_keys", own, 0o600, carol.uid, carol.gid)
    accounts = AccountsSubsystem()

    ok(accounts.reconcile(g.ctx, gce_keys(carol=[ED25519])))
    assert g.keys("carol") == own + managed(ED25519)

    ok(accounts.reconcile(g.ctx, gce_keys(carol=[RSA, ECDSA])))
    assert g.keys("carol") == own + managed(RSA, ECDSA)

    # carol leaves metadata: only the managed lines go, hers stay, and so does she
    ok(accounts.reconcile(g.ctx, gce_keys(alice=[ED25519_BOB])))
    assert g.keys("carol") == own
    assert "carol" in g.users.passwd
    assert "carol" not in g.users.groups()["google-sudoers"]


def test_a_symlinked_ssh_dir_is_refused_with_a_reason_and_the_others_are_provisioned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = guest()
    g.fs.add_dir("/root/.ssh", 0o700)
    g.fs.add_file("/root/.ssh/authorized_keys", "root's own\n", 0o600)
    mallory = g.users.add_user("mallory")
    g.fs.add_symlink("/home/mallory/.ssh", "/root/.ssh", mallory.uid, mallory.gid)

    with caplog.at_level(logging.WARNING, logger="guestagent"):
        ok(AccountsSubsystem().reconcile(g.ctx, gce_keys(mallory=[RSA], alice=[ED25519])))

    assert "not writing keys for mallory: ~/.ssh is a symlink" in caplog.messages
    assert g.fs.read_text("/root/.ssh/authorized_keys") == "root's own\n"
    assert g.fs.entry("/home/mallory/.ssh").kind == "link"  # type: ignore[union-attr]
    assert not any(path.startswith(("/root", "/home/mallory")) for path in g.fs.writes)
    assert g.keys("alice") == managed(ED25519)


def test_a_symlinked_keys_file_is_refused_too(caplog: pytest.LogCaptureFixture) -> None:
    g = guest()
    eve = g.users.add_user("eve")
    g.fs.add_dir("/home/eve/.ssh", 0o700, eve.uid, eve.gid)
    g.fs.add_symlink("/home/eve/.ssh/authorized_keys", "/etc/shadow", eve.uid, eve.gid)

    with caplog.at_level(logging.WARNING, logger="guestagent"):
        ok(AccountsSubsystem().reconcile(g.ctx, gce_keys(eve=[RSA], alice=[ED25519])))

    assert "not writing keys for eve: ~/.ssh/authorized_keys is a symlink" in caplog.messages
    assert g.fs.read_text("/etc/shadow") is None
    assert g.keys("alice") == managed(ED25519)


def test_a_symlink_that_appears_by_apply_time_is_refused_by_the_file_system(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The skeleton holds a ~/.ssh link, so the home useradd makes has one the planner never
    # saw: the write itself must refuse it, as a failure of that user alone.
    g = guest()
    g.fs.add_symlink("/etc/skel/.ssh", "/root/.ssh")

    with caplog.at_level(logging.ERROR, logger="guestagent"):
        outcome = AccountsSubsystem().reconcile(g.ctx, gce_keys(alice=[ED25519], bob=[ED25519_BOB]))

    assert len(outcome.failures) == 2
    assert all("is a symlink" in failure for failure in outcome.failures)
    assert g.fs.paths("/root") == []
    assert "alice" in g.users.passwd and "bob" in g.users.passwd


def test_default_user_keys_use_the_non_gce_layout_and_the_user_is_never_deleted() -> None:
    config = Config(Accounts=Accounts(default_user="debian", deprovision_remove=True))
    g = guest(config)
    debian = g.users.add_user("debian", uid=1000, groups=("adm", "sudo"))
    accounts = AccountsSubsystem()

    ok(accounts.reconcile(g.ctx, unnamed_keys(ED25519, RSA)))

    assert g.users.commands == [
        ("groupadd", "guestagent-sudoers"),
        ("gpasswd", "-a", "debian", "guestagent-sudoers"),
    ]
    assert g.users.groups()["guestagent-sudoers"] == {"debian"}
    assert g.fs.read_text("/etc/sudoers.d/guestagent") == "%guestagent-sudoers ALL=(ALL:ALL) NOPASSWD:ALL\n"
    assert g.keys("debian") == managed(ED25519, RSA, marker=AGENT)
    assert g.fs.read_text("/var/lib/guestagent/ec2_users") == "debian\n"
    # nothing of Google's layout
    assert g.fs.paths("/var/lib/google") == []
    assert not g.fs.exists("/etc/sudoers.d/google_sudoers")
    assert "google-sudoers" not in g.users.groups()

    # the keys leave metadata: deprovision_remove or not, the image's user stays
    g.settle()
    ok(accounts.reconcile(g.ctx, unnamed_keys()))
    assert not any(c[0] == "userdel" for c in g.users.commands)
    assert g.users.passwd["debian"] == debian
    assert g.keys("debian") == ""
    assert "debian" not in g.users.groups()["guestagent-sudoers"]
    assert g.fs.read_text("/var/lib/guestagent/ec2_users") == ""


def test_a_missing_default_user_is_created_in_its_own_groups() -> None:
    g = guest(Config(Accounts=Accounts(default_user="debian")))
    ok(AccountsSubsystem().reconcile(g.ctx, unnamed_keys(ED25519, platform="nocloud")))

    (useradd,) = [c for c in g.users.commands if c[0] == "useradd"]
    assert useradd[-3:] == ("-G", "adm,sudo,guestagent-sudoers", "debian")
    assert g.keys("debian") == managed(ED25519, marker=AGENT)
    assert g.fs.read_text("/var/lib/guestagent/nocloud_users") == "debian\n"


def test_without_a_default_user_unnamed_keys_are_ignored_with_one_note(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = guest()
    accounts = AccountsSubsystem()
    with caplog.at_level(logging.WARNING, logger="guestagent"):
        ok(accounts.reconcile(g.ctx, unnamed_keys(ED25519, RSA)))
        ok(accounts.reconcile(g.ctx, unnamed_keys(ED25519, RSA)))

    notes = [m for m in caplog.messages if "default user" in m]
    assert notes == ["2 keys for the image's default user ignored: [Accounts] default_user is not set"]
    assert g.runner.calls == []
    assert g.fs.operations == []


def test_a_user_whose_home_is_missing_gets_it_made_and_then_its_keys() -> None:
    g = guest()
    # useradd was killed after it wrote passwd and before it made the home
    dave = g.users.add_user("dave", create_home=False)
    assert g.fs.stat("/home/dave") is None

    ok(AccountsSubsystem().reconcile(g.ctx, gce_keys(dave=[ED25519])))

    assert [op for op in g.fs.operations if op[1].startswith("/home/dave")] == [
        ("create_home", "/home/dave"),
        ("write_user_file", "/home/dave/.ssh/authorized_keys"),
    ]
    home = g.fs.stat("/home/dave")
    assert home is not None and (home.mode, home.uid, home.gid) == (0o750, dave.uid, dave.gid)
    assert g.fs.read_text("/home/dave/.bashrc") == SKEL_BASHRC
    assert g.keys("dave") == managed(ED25519)
    assert not any(c[0] == "useradd" for c in g.users.commands)


def test_deprovision_remove_deletes_a_user_that_left_metadata_with_its_home() -> None:
    g = guest(Config(Accounts=Accounts(deprovision_remove=True)))
    accounts = AccountsSubsystem()
    ok(accounts.reconcile(g.ctx, gce_keys(alice=[ED25519], bob=[ED25519_BOB])))

    ok(accounts.reconcile(g.ctx, gce_keys(bob=[ED25519_BOB])))

    assert ("userdel", "-r", "alice") in g.users.commands
    assert "alice" not in g.users.passwd
    assert not g.fs.exists("/home/alice")
    assert g.fs.exists("/home/bob/.ssh/authorized_keys")
    assert g.fs.read_text("/var/lib/google/google_users") == "bob\n"


def test_a_failing_command_fails_that_user_alone_and_the_next_pass_retries() -> None:
    g = guest()

    def refuse_alice(argv: tuple[str, ...]) -> CommandResult | None:
        if argv[0] == "useradd" and argv[-1] == "alice":
            return CommandResult(argv, 1, "", "useradd: cannot lock /etc/passwd; try again later.\n")
        return g.users.respond(argv)

    g.runner.respond = refuse_alice
    accounts = AccountsSubsystem()
    outcome = accounts.reconcile(g.ctx, gce_keys(alice=[ED25519], bob=[ED25519_BOB]))

    assert len(outcome.failures) == 1 and "useradd exit 1: useradd: cannot lock" in outcome.failures[0]
    assert g.keys("bob") == managed(ED25519_BOB)
    assert not g.fs.exists("/home/alice")
    # the record leaves the failed user out, so it is not counted as managed yet
    assert g.fs.read_text("/var/lib/google/google_users") == "bob\n"

    g.runner.respond = g.users.respond
    ok(accounts.reconcile(g.ctx, gce_keys(alice=[ED25519], bob=[ED25519_BOB])))
    assert g.keys("alice") == managed(ED25519)
    assert g.fs.read_text("/var/lib/google/google_users") == "alice\nbob\n"


def test_a_sudoers_file_visudo_rejects_is_not_put_in_place() -> None:
    g = guest()

    def visudo_says_no(argv: tuple[str, ...]) -> CommandResult | None:
        if argv[0].endswith("visudo"):
            # the check sees the temp file, with the text that would go into place
            assert g.fs.read_text(g.fs.guest_path(argv[2])) == "%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL\n"
            return CommandResult(argv, 1, "", "parse error\n")
        return g.users.respond(argv)

    g.runner.respond = visudo_says_no
    outcome = AccountsSubsystem().reconcile(g.ctx, gce_keys(alice=[ED25519]))

    assert any("visudo rejected the sudoers file: parse error" in f for f in outcome.failures)
    assert g.fs.paths("/etc/sudoers.d") == []  # neither the file nor a temp left behind
    assert g.keys("alice") == managed(ED25519)
