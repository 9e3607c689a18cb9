from __future__ import annotations

from datetime import UTC, datetime, timedelta

from guestagent.domain import accounts as acc
from guestagent.domain.authorized_keys import MARKER
from guestagent.domain.config import Accounts
from guestagent.domain.local_users import KeysFileState, PasswdEntry
from guestagent.domain.metadata import InstanceMetadata, SshKey
from tests.keys import ED25519, ED25519_BOB, RSA

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BASE_USERS = {
    "root": PasswdEntry("root", 0, 0, "/root", "/bin/bash"),
    "daemon": PasswdEntry("daemon", 1, 1, "/usr/sbin", "/usr/sbin/nologin"),
    "postgres": PasswdEntry("postgres", 105, 110, "/var/lib/postgresql", "/bin/bash"),
}
BASE_GROUPS = {"adm": frozenset(), "video": frozenset(), "google-sudoers": frozenset()}


def metadata(*keys: SshKey) -> InstanceMetadata:
    return InstanceMetadata(platform="gce", instance_id="1", ssh_keys=keys)


def key(user: str, line: str = ED25519, expires: datetime | None = None) -> SshKey:
    return SshKey(user=user, line=line, key_type=line.split()[0], expires_at=expires)


def entry(name: str, uid: int = 1001) -> PasswdEntry:
    return PasswdEntry(name, uid, uid, f"/home/{name}", "/bin/bash")


def good_file(text: str, uid: int = 1001) -> KeysFileState:
    return KeysFileState(text=text, mode=0o600, uid=uid, gid=uid, ssh_dir_mode=0o700, ssh_dir_uid=uid)


def current(
    users: dict[str, PasswdEntry] | None = None,
    groups: dict[str, frozenset[str]] | None = None,
    managed: frozenset[str] = frozenset(),
    files: dict[str, KeysFileState] | None = None,
    sudoers: str | None = acc.SUDOERS_TEXT,
) -> acc.AccountsCurrent:
    return acc.AccountsCurrent(
        users={**BASE_USERS, **(users or {})},
        groups={**BASE_GROUPS, **(groups or {})},
        managed=managed,
        keys_files=files or {},
        sudoers_text=sudoers,
    )


def plan(md: InstanceMetadata, have: acc.AccountsCurrent, config: Accounts | None = None) -> acc.AccountsPlan:
    return acc.plan(acc.desired(md, NOW), have, config or Accounts())


def test_first_run_creates_group_sudoers_user_keys_and_record() -> None:
    have = acc.AccountsCurrent(
        users=BASE_USERS,
        groups={"adm": frozenset(), "video": frozenset()},
        managed=frozenset(),
        keys_files={},
        sudoers_text=None,
    )
    result = plan(metadata(key("alice"), key("alice", RSA)), have)
    assert result.actions == (
        acc.CreateGroup("google-sudoers"),
        acc.WriteSudoers(acc.SUDOERS_PATH, acc.SUDOERS_TEXT),
        # configured groups that exist, in config order, then the sudo group; missing ones skipped
        acc.CreateUser("alice", ("adm", "video", "google-sudoers")),
        acc.WriteKeys("alice", f"{MARKER}\n{ED25519}\n{MARKER}\n{RSA}\n", 2),
        acc.WriteManagedUsers(acc.STATE_PATH, ("alice",)),
    )


def test_second_run_with_same_state_plans_nothing() -> None:
    have = current(
        users={"alice": entry("alice")},
        groups={"google-sudoers": frozenset({"alice"})},
        managed=frozenset({"alice"}),
        files={"alice": good_file(f"{MARKER}\n{ED25519}\n")},
    )
    assert plan(metadata(key("alice")), have).actions == ()


def test_changed_key_rewrites_only_that_users_file() -> None:
    have = current(
        users={"alice": entry("alice"), "bob": entry("bob", 1002)},
        groups={"google-sudoers": frozenset({"alice", "bob"})},
        managed=frozenset({"alice", "bob"}),
        files={
            "alice": good_file(f"{MARKER}\n{ED25519}\n"),
            "bob": good_file(f"{MARKER}\n{ED25519_BOB}\n", 1002),
        },
    )
    result = plan(metadata(key("alice", RSA), key("bob", ED25519_BOB)), have)
    assert result.actions == (acc.WriteKeys("alice", f"{MARKER}\n{RSA}\n", 1),)


def test_existing_local_user_is_adopted_not_created() -> None:
    have = current(users={"carol": entry("carol")}, files={"carol": good_file("my-own-line\n")})
    result = plan(metadata(key("carol")), have)
    assert result.actions == (
        acc.AddToGroup("carol", "google-sudoers"),
        acc.WriteKeys("carol", f"my-own-line\n{MARKER}\n{ED25519}\n", 1),
        acc.WriteManagedUsers(acc.STATE_PATH, ("carol",)),
    )


def test_removed_user_loses_only_managed_keys_and_sudo() -> None:
    have = current(
        users={"alice": entry("alice")},
        groups={"google-sudoers": frozenset({"alice"}), "adm": frozenset({"alice"})},
        managed=frozenset({"alice"}),
        files={"alice": good_file(f"{RSA}\n{MARKER}\n{ED25519}\n")},
    )
    result = plan(metadata(), have)
    assert result.actions == (
        acc.WriteKeys("alice", f"{RSA}\n", 0),
        acc.RemoveFromGroup("alice", "google-sudoers"),
        acc.WriteManagedUsers(acc.STATE_PATH, ()),
    )


def test_deprovision_remove_deletes_the_user() -> None:
    have = current(
        users={"alice": entry("alice")},
        groups={"google-sudoers": frozenset({"alice"})},
        managed=frozenset({"alice"}),
        files={"alice": good_file(f"{MARKER}\n{ED25519}\n")},
    )
    result = plan(metadata(), have, Accounts(deprovision_remove=True))
    assert result.actions == (acc.DeleteUser("alice"), acc.WriteManagedUsers(acc.STATE_PATH, ()))


def test_unmanaged_users_are_never_touched() -> None:
    have = current(
        users={"dave": entry("dave")},
        groups={"google-sudoers": frozenset({"dave"})},  # put there by an admin
        files={"dave": good_file(f"{MARKER}\n{ED25519}\n")},
    )
    assert plan(metadata(), have).actions == ()


def test_system_accounts_are_refused_unless_allowed() -> None:
    md = metadata(key("root"), key("postgres"), key("alice"))
    result = plan(md, current())
    assert [a for a in result.actions if isinstance(a, acc.CreateUser)] == [
        acc.CreateUser("alice", ("adm", "video", "google-sudoers"))
    ]
    assert any("root" in n and "system account" in n for n in result.notes)
    assert any("postgres" in n for n in result.notes)  # uid 105 < UID_MIN on this machine
    allowed = plan(md, current(), Accounts(allowed_system_users=("root",)))
    assert acc.AddToGroup("root", "google-sudoers") in allowed.actions


def test_expired_keys_are_not_installed_and_expiry_sets_a_wake_time() -> None:
    soon = NOW + timedelta(minutes=5)
    md = metadata(key("alice", expires=NOW - timedelta(seconds=1)), key("bob", ED25519_BOB, expires=soon))
    want = acc.desired(md, NOW)
    assert set(want.keys) == {"bob"}
    assert want.next_expiry == soon
    later = acc.desired(md, soon)
    assert later.keys == {}


def test_symlinked_ssh_dir_is_refused_with_a_note() -> None:
    have = current(
        users={"eve": entry("eve")},
        groups={"google-sudoers": frozenset({"eve"})},
        managed=frozenset({"eve"}),
        files={"eve": KeysFileState(text=None, ssh_dir_is_symlink=True)},
    )
    result = plan(metadata(key("eve")), have)
    assert result.actions == ()
    assert result.notes == ("not writing keys for eve: ~/.ssh is a symlink",)


def test_wrong_mode_is_repaired_without_changing_content() -> None:
    text = f"{MARKER}\n{ED25519}\n"
    loose = KeysFileState(text=text, mode=0o644, uid=1001, gid=1001, ssh_dir_mode=0o755, ssh_dir_uid=1001)
    have = current(
        users={"alice": entry("alice")},
        groups={"google-sudoers": frozenset({"alice"})},
        managed=frozenset({"alice"}),
        files={"alice": loose},
    )
    assert plan(metadata(key("alice")), have).actions == (acc.WriteKeys("alice", text, 1),)


def test_rejections_become_notes_without_key_material() -> None:
    from guestagent.domain.platforms.gce import parse_gce

    md = parse_gce({"instance": {"id": 1, "attributes": {"ssh-keys": "bad user:ssh-ed25519 AAAAC3Nza"}}})
    result = acc.plan(acc.desired(md, NOW), current(), Accounts())
    assert result.actions == ()
    (rejection,) = md.rejections_for("accounts")
    assert "AAAA" not in rejection.describe() and not rejection.holds


def test_descriptions_never_contain_keys() -> None:
    result = plan(metadata(key("alice")), current())
    assert all("AAAA" not in a.describe() for a in result.actions)


def test_scope_limits_the_work_to_changed_users() -> None:
    have = current(
        users={"alice": entry("alice"), "bob": entry("bob", 1002)},
        groups={"google-sudoers": frozenset({"bob"})},  # alice lost sudo behind our back
        managed=frozenset({"alice", "bob"}),
        files={"bob": good_file(f"{MARKER}\n{ED25519_BOB}\n", 1002)},
    )
    want = acc.desired(metadata(key("alice"), key("bob", RSA)), NOW)
    scoped = acc.plan(want, have, Accounts(), scope=frozenset({"bob"}))
    assert scoped.actions == (acc.WriteKeys("bob", f"{MARKER}\n{RSA}\n", 1),)
    full = acc.plan(want, have, Accounts())
    assert acc.AddToGroup("alice", "google-sudoers") in full.actions
